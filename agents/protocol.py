"""The wire contract between the controller and the device agent, in one place.

Both sides import these names: the agent (standard library, Python 3.8+)
writes the files and exit statuses below, and the controller's
``orchestrator/agent_client.py`` reads them. A value that crosses the wire is
written here once and nowhere else, so the two sides cannot drift apart.

A job directory on the device holds::

    job.json       the job spec, written by ``agent start`` from stdin
    agent.pid      the runner's pid, written by the runner
    events.jsonl   the event log (one JSON object per line, see agents/events.py)
    agent.stderr   whatever the runner wrote to stderr
    agent.exit     the runner's exit status, written when it ends

The device's work directory holds ``lease.json`` (which controller may run
jobs there) and ``agent/agent-<sha256>.pyz`` (the agent itself).
"""


from typing import Any, Dict, FrozenSet, List, Optional, Tuple, TypedDict, Union

#: Version of the JSON-lines event schema (the ``v`` field of every event).
PROTOCOL_VERSION = 1

# -- files --------------------------------------------------------------------
JOB_FILE = "job.json"
PID_FILE = "agent.pid"
EVENTS_FILE = "events.jsonl"
STDERR_FILE = "agent.stderr"
EXIT_FILE = "agent.exit"
LEASE_FILE = "lease.json"
#: Sub-directories of a device's work directory.
AGENT_SUBDIR = "agent"
JOBS_SUBDIR = "jobs"

# -- exit statuses of the job-control commands (start --follow, follow) -------
#: The job's ``result`` event was streamed: the attempt is complete.
EXIT_DONE = 0
#: Bad command line (argparse's own status).
EXIT_USAGE = 2
#: The runner died without writing ``result``.
EXIT_RUNNER_DIED = 3
#: ``start --lease-owner`` found the lease held by another controller; nothing started.
EXIT_LEASE_REFUSED = 4
#: The presence test in front of every agent command found no zipapp at its path.
EXIT_AGENT_MISSING = 199

# -- states of a job directory, as ``agent status`` reports them --------------
JOB_ABSENT = "absent"
JOB_RUNNING = "running"
JOB_EXITED = "exited"
JOB_STATES = (JOB_ABSENT, JOB_RUNNING, JOB_EXITED)

# -- event kinds ----------------------------------------------------------------
EV_HELLO = "hello"
EV_PHASE = "phase"
EV_SAMPLE = "sample"
EV_REPETITION = "repetition"
EV_HEARTBEAT = "heartbeat"
EV_ERROR = "error"
EV_RESULT = "result"
#: A MoE model's routing share, from the profiling pass after the counted
#: repetitions (agents/routing_share.py).
EV_ROUTING = "routing"
EVENT_KINDS = (EV_HELLO, EV_PHASE, EV_SAMPLE, EV_REPETITION, EV_RESULT, EV_ERROR, EV_HEARTBEAT,
               EV_ROUTING)
#: How the agent writes a result event's kind field (compact JSON, see events.py):
#: ``follow`` looks for these bytes to stop without parsing every line.
RESULT_MARKER = b'"kind":"result"'

# -- error kinds ------------------------------------------------------------------
# Reported by the agent in ``error`` and ``result`` events:
ERR_MODEL_MISSING = "model-missing"
ERR_BACKEND_MISSING = "backend-missing"
ERR_BACKEND = "backend-error"
ERR_OUT_OF_MEMORY = "out-of-memory"
ERR_BAD_JOB = "bad-job"
ERR_AGENT = "agent-error"
AGENT_ERROR_KINDS = (ERR_MODEL_MISSING, ERR_BACKEND_MISSING, ERR_BACKEND, ERR_OUT_OF_MEMORY,
                     ERR_BAD_JOB, ERR_AGENT)
# Decided by the controller about an attempt:
ERR_AGENT_CRASHED = "agent-crashed"
ERR_TIMEOUT = "timeout"
ERR_CANCELLED = "cancelled"
ERR_TRANSPORT = "transport-error"
ERR_UNREACHABLE = "unreachable"
ERR_HOST_KEY = "host-key"
ERR_AUTH = "auth"
ERR_DEVICE_LEASED = "device-leased"
#: A fault in the controller itself (a bug, not the device): never quarantines a device.
ERR_CONTROLLER = "controller-error"
CONTROLLER_ERROR_KINDS = (ERR_AGENT_CRASHED, ERR_TIMEOUT, ERR_CANCELLED, ERR_TRANSPORT,
                          ERR_UNREACHABLE, ERR_HOST_KEY, ERR_AUTH, ERR_DEVICE_LEASED,
                          ERR_CONTROLLER)
#: Kinds that say the device, not the job, is broken: its other jobs would fail alike.
DEVICE_FAILURE_KINDS: FrozenSet[str] = frozenset({ERR_UNREACHABLE, ERR_HOST_KEY, ERR_AUTH,
                                                   ERR_DEVICE_LEASED})

#: Every error kind a stored attempt may carry, with what it means (for docs and reports).
ERROR_KINDS: Dict[str, str] = {
    ERR_MODEL_MISSING: "the model file is not on the device",
    ERR_BACKEND_MISSING: "the chosen backend is not installed on the device",
    ERR_BACKEND: "the backend failed while running the job",
    ERR_OUT_OF_MEMORY: "the agent ran out of memory",
    ERR_BAD_JOB: "the job spec is invalid for this device",
    ERR_AGENT: "the agent hit an unexpected error (traceback in the event)",
    ERR_AGENT_CRASHED: "the agent died without reporting a result",
    ERR_TIMEOUT: "the job ran past its timeout and was stopped",
    ERR_CANCELLED: "the job was cancelled",
    ERR_TRANSPORT: "a command or file copy to the device failed",
    ERR_UNREACHABLE: "the device did not answer for too long",
    ERR_HOST_KEY: "the device's host key is unknown or changed",
    ERR_AUTH: "the device refused the controller's key",
    ERR_DEVICE_LEASED: "another controller holds the device's lease",
    ERR_CONTROLLER: "the controller itself failed (a bug; the device is not blamed)",
}

# -- the job spec (job.json) --------------------------------------------------------
#: Version of the job spec (the ``schema`` field of job.json).
JOB_SPEC_SCHEMA = 1


class ModelRef(TypedDict):
    """Which model a job benchmarks: ``source`` is ``{"path": P}`` or ``{"preset", "quant"}``."""

    id: str
    arch: str
    source: Dict[str, object]


class AdaptiveRounds(TypedDict):
    """Rounds until every pair's 95% CI half-width is at most ``target_ci_pct``."""

    min: int
    max: int
    target_ci_pct: float


class TorchParamsSpec(TypedDict, total=False):
    """Backend torch's settings of one job (agents/backends/torch_backend.py)."""

    device: str  # "cpu", "cuda" or "mps"
    dtype: str  # "float32", "float16" or "bfloat16"
    experts: str  # MoE experts implementation asked for; absent for a job of dense models
    decode: str  # "eager" or "compiled"


class _JobParamsOptional(TypedDict, total=False):
    torch: TorchParamsSpec  # backend torch only


class JobParamsSpec(_JobParamsOptional):
    """What one job measures."""

    prompt_tokens: int
    gen_tokens: int
    threads: int
    gpu_layers: int
    repetitions: Union[int, AdaptiveRounds]  # rounds (agents/rounds.py)
    warmup: int
    keep_loaded: bool  # paired jobs: keep models loaded across rounds (else fresh loads)
    cpu_repack: bool  # llama.cpp's CPU weight repacking (its default: on)
    # counted repetitions of each model per round (median counts), or "auto":
    # sized after round 0 from the measured load cost (agents/round_runner.py)
    repetitions_per_round: Union[int, str]
    routing_profile: bool  # after the repetitions, a profiling pass per MoE model (routing share)


class DeviceRef(TypedDict):
    """The device's own settings, added by the controller when it sends the job."""

    name: str
    models_dir: str
    llama_bench: Optional[str]


class CooldownSpec(TypedDict):
    """Wait between repetitions until the hottest sensor is below ``max_temp_c`` (telemetry)."""

    max_temp_c: float
    timeout_s: float


class _JobSpecRequired(TypedDict):
    schema: int
    job_key: str
    model: ModelRef
    params: JobParamsSpec
    backend: str


class JobSpec(_JobSpecRequired, total=False):
    """job.json: what the agent is asked to run (the controller's ``planner.Job``).

    ``models`` lists a pair's MoE and its dense baselines, run in paired
    rounds; ``model`` is its first (or only) model.
    """

    models: List[ModelRef]
    attempt: int
    timeout_s: float
    device: DeviceRef
    heartbeat_s: float
    telemetry: bool
    telemetry_interval_s: float
    idle_s: float
    cooldown: CooldownSpec
    #: Test-only telemetry source (``agents/telemetry/sources/fake.py``).
    telemetry_test_source: str
    #: Rounds an earlier attempt completed: ``{"attempt": n, "rounds": [[repetition, ...],
    #: ...]}``, replayed before new rounds run (``agents/round_runner.py``).
    carried: Dict[str, Any]


class EventEnvelope(TypedDict):
    """The fields every event carries; each kind adds its own (see agents/events.py)."""

    v: int
    seq: int
    kind: str
    job: str
    attempt: int
    t: float
    mono: float


# -- lease actions ------------------------------------------------------------------
LEASE_ACTIONS: Tuple[str, ...] = ("acquire", "refresh", "release", "takeover")


def agent_filename(sha256: str) -> str:
    """The agent zipapp's content-addressed file name."""
    return "agent-%s.pyz" % sha256[:16]

# -- agent integrity (checked by the agent before every command; see agents/cli.py) --
#: The zipapp's bytes do not hash to the sha256 prefix in its name: the agent refused to run.
EXIT_AGENT_CORRUPT = 198
#: Inside the zipapp: ``{"agents/<file>": sha256}`` of every packaged file.
MANIFEST_FILE = "_manifest.json"
