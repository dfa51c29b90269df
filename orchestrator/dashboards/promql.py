"""PromQL fragments shared by the dashboards.

Selectors always use ``=~`` with template variables, because a multi-value or
"All" variable expands to a regular expression (``a|b`` or ``.*``); the same
text then runs unchanged against Prometheus once ``queries.substitute`` has put
``.*`` in place of each variable.
"""

from __future__ import annotations

__all__ = ["PAIR_SIDE_REGEX", "paired", "sel"]


def sel(metric: str, *regex_vars: str, **exact: str) -> str:
    """``metric{a=~"$a", b="x"}``: each name in ``regex_vars`` matched against its variable.

    Keyword arguments match a label exactly (``rail="total"``).
    """
    parts = [f'{name}=~"${name}"' for name in regex_vars]
    parts += [f'{name}="{value}"' for name, value in exact.items()]
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


#: ``pair`` is ``<moe id>_vs_<dense id>`` (docs/metrics.md); these regexes pull
#: one side out of it. label_replace anchors them, and the greedy ``.+`` on the
#: other side keeps an id that itself contains ``_vs_`` on the MoE side.
PAIR_SIDE_REGEX = {"moe": ("(.+)_vs_.+", "$1"), "dense": (".+_vs_(.+)", "$1")}


def paired(metric: str, side: str) -> str:
    """Series of a per-model metric whose model is the ``side`` of a selected pair.

    Per-model metrics (decode tok/s, J/token, ...) carry ``model`` but not
    ``pair``; the pair ratios carry ``pair`` but not ``model``. Copying one side
    of ``pair`` into a ``model`` label of the decode ratio and joining with
    ``and on (sweep, device, config, model)`` keeps exactly the models of the
    pairs chosen in the ``$pair`` variable, on the chosen devices and configs.
    """
    regex, replacement = PAIR_SIDE_REGEX[side]
    left = sel(metric, "sweep", "device", "config")
    right = sel("edgefarm_moe_dense_decode_ratio", "sweep", "device", "pair", "config")
    return (
        f"{left}\n  and on (sweep, device, config, model)\n"
        f'  label_replace({right}, "model", "{replacement}", "pair", "{regex}")'
    )
