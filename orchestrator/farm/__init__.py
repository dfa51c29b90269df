"""The always-on farm service (``edgefarm serve``): one scrape target for the whole farm.

A sweep's own exporter lives and dies with the sweep; dashboards of the farm
must not. The farm service keeps exporting, between sweeps and during them:

* ``store_live.py`` — what running sweeps are doing, read from the results
  store the sweeps write as events arrive: busy devices, each device's phase,
  live power, memory and temperature from ``sample`` events, attempts by
  outcome, samples received. No connection to the sweep process is needed,
  so there is no gap at sweep boundaries and a killed controller leaves the
  last known state, going stale, rather than a hole.
* ``health.py`` — a poller that asks every inventory device for one idle
  reading (``edgefarm-agent health``) at a modest interval: reachability,
  idle power, memory, temperatures, throttling and who holds the lease.
* ``collector.py`` — the Prometheus collector that merges the two per device
  (the fresher reading wins) together with quarantines from the store.
* ``service.py`` — builds the registry (that collector plus the results of
  the running and last finished sweeps, ``metrics.StoreCollector``) and
  serves it until stopped.
"""
