"""Exit codes the services share with whatever supervises them (the manager, systemd, compose)."""

# sysexits.h EX_CONFIG: the service refused its configuration (beat: an entry of the schedule table it
# cannot schedule) and said why in its log's last CRITICAL line. Starting it again cannot help, so no
# supervisor should: the manager gives up at once, systemd units carry RestartPreventExitStatus=78.
EXIT_CONFIG_REFUSED = 78
