"""callbackd's domain and its storage: attempts, detection, callbacks, claims and leases.

Pure rules (detection, state transitions) take a clock and do no I/O; the store
module is the only place that talks to the database.
"""
