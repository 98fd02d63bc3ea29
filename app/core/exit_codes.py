"""Exit codes the services share with whatever supervises them (the manager, systemd, compose)."""

# sysexits.h EX_TEMPFAIL: a worker whose lease another worker claimed while it was cut off (it handed
# over its messages) stops at once; its supervisor starts it afresh (app/tasks/recovery.py).
EXIT_LEASE_LOST = 75

# sysexits.h EX_CONFIG: the service refused its configuration (beat: an entry of the schedule table it
# cannot schedule) and said why in its log's last CRITICAL line. Starting it again cannot help, so no
# supervisor should: the manager gives up at once, systemd units carry RestartPreventExitStatus=78.
EXIT_CONFIG_REFUSED = 78
