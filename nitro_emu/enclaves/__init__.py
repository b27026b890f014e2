"""Enclaves as nitro-cli runs them: started in the background by `run-enclave`, listed by
`describe-enclaves`, watched by `console`, stopped by `terminate-enclave`, many at once.

- `store`: the per-user state directory (records, locks, sockets, console logs)
- `allocate`: CIDs, names and IDs for new enclaves
- `spec`: what run-enclave was asked (flags or --config), checked as nitro-cli does
- `launch`: starting the detached enclave process and waiting for the boot heartbeat
- `process`: the enclave process itself (the machine, its control socket, its console)
- `control`: the control socket's protocol; `control_thread`: the thread that serves it
- `console_log`: the console log on disk (written by the process, followed by `console`)
- `manager`: finding, describing and terminating running enclaves
- `json_output`, `errors`: nitro-cli's JSON and its error codes
"""
