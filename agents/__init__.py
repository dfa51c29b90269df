"""edgefarm device agent.

Everything in this package runs on the benchmarked device. The core uses the
Python standard library alone and runs on Python 3.8+ (JetPack 5 ships 3.8,
macOS ships 3.9). Optional backends (xllamacpp, the llama-bench binary) are
imported or looked up only when a job asks for them, and ``probe`` reports
which are present.

The controller ships this package as one zipapp (see
``orchestrator/bundle.py``); nothing is pip-installed on a device.
"""

__version__ = "0.1.0"

#: Version of the JSON-lines event protocol the agent writes (defined in protocol.py).
from agents.protocol import PROTOCOL_VERSION as EVENT_SCHEMA  # noqa: E402

__all__ = ["EVENT_SCHEMA", "__version__"]
