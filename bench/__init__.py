"""mss-relay's benchmarks, a small package run from the checkout's root.

    .venv/bin/python bench/compare.py --quick     # or: .venv/bin/python -m bench.compare

Layout:
    harness.py     what every benchmark starts: free ports, processes in a session of
                   their own, smtp-sink, the private Postfix (the honest peer's settings),
                   the recording upstream, the relay's YAML configuration, the relay process
    procfs.py      CPU time, process trees and peak memory read from /proc
    load.py        the message shapes, smtp-source and the timed probe (both connection
                   patterns: persistent sessions, a new connection per message)
    targets.py     the servers bench/compare.py measures (smtp-sink, Postfix, pass-through,
                   mss-relay with 1 and N workers)
    plan.py        what compare measures: options, targets x sizes x patterns x sessions,
                   how many messages a run sends
    run.py         the load runs, and what each one saw
    report.py      medians, ratios, bench/results/compare.{json,md}
    compare.py     compare's entry point: plan -> run -> report
    memory.py, nesting_probe.py, state_cost.py, state_locked.py, tls_auth.py,
    conversation_lookup.py, passthrough.py, postfix_variants.py
                   the other benchmarks and probes (each says what it measures)
    _script.py     the one bootstrap that lets `python bench/NAME.py` run as `-m bench.NAME`

Shared with the tests: tests/support (the recording upstream server, the Postfix
instance, free ports) is imported as the package it is (tests/__init__.py), not
copied: the tests own those helpers and bench is one more user of them.
"""
