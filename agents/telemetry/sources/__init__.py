"""Live telemetry sources: what the sampler reads while a job runs.

One module per source, because the sources share nothing but a contract
(:mod:`.base`) and each depends on different things: a vendor library
(:mod:`.nvml`), sysfs (:mod:`.rapl`, :mod:`.jetson`, :mod:`.system`), a tool
run as a child process (:mod:`.process`, used by :mod:`.tegrastats`,
:mod:`.macmon`, :mod:`.powermetrics`). :mod:`.selection` picks the ones that
work on a device; :mod:`.fake` holds the TEST-ONLY sources a job spec may
name. A reader of one source reads one file, and a change to one cannot
break another.

Nothing is imported here, so importing one source does not load the others
(and :mod:`.nvml` never imports ``pynvml`` until it is used).
Standard library only, Python 3.8+.
"""
