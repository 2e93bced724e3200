"""OCS plugin: the agent classes suprsync provides to ``ocs-agent-cli``.

``SupRsync`` takes the place of the original agent in existing site configs;
``SuprsyncAgent`` names suprsync unambiguously where socs is installed too.
"""

package_name = "suprsync"
agents = {
    "SupRsync": {"module": "suprsync.ocs_agent", "entry_point": "main"},
    "SuprsyncAgent": {"module": "suprsync.ocs_agent", "entry_point": "main_unambiguous"},
}
