"""The device inventory: which machines exist and how the controller reaches them.

An inventory file lists devices once; sweeps then pick devices from it by
name, platform or labels. Every string that ends up on a remote command line
(host, user, paths, the interpreter) is checked here against a conservative
pattern, so a typo or a hostile value is reported at its line instead of
reaching a shell or an ``ssh`` option parser. Secrets never live in the file:
passwords are refused outright and a key passphrase is referenced by the name
of an environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from orchestrator.config.yaml_loader import (
    LoadedYaml,
    LocatedValueError,
    LocPart,
    load_yaml,
    problem_at,
    short_repr,
    validate_loaded,
)
from orchestrator.errors import ConfigError, ConfigProblem

#: Names of devices, sites, sweeps and models, and label keys/values. Safe in
#: file names, shell words, Prometheus labels and URLs without quoting.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"

Transport = Literal["local", "ssh"]
Platform = Literal["apple-silicon", "jetson", "nvidia-gpu", "linux-cpu"]
#: Known transports, in the order messages list them.
TRANSPORTS: tuple[str, ...] = get_args(Transport)
#: Known platforms, in the order messages list them.
PLATFORMS: tuple[str, ...] = get_args(Platform)

#: Fields that only mean something for ``transport: ssh``.
SSH_ONLY_FIELDS: tuple[str, ...] = (
    "host",
    "port",
    "user",
    "identity_file",
    "proxy_jump",
    "passphrase_env",
)
DEFAULT_SSH_PORT = 22
PASSWORD_MESSAGE = (
    "passwords are not accepted in inventory files; use identity_file, ssh-agent or passphrase_env"
)

_HOST_RE = re.compile(r"(?!-)[A-Za-z0-9._:%\[\]-]{1,253}")
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_JUMP_HOP_RE = re.compile(
    r"(?:[A-Za-z_][A-Za-z0-9._-]{0,31}@)?"  # optional user@
    r"(?:(?!-)[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.%]+\])"  # host or [IPv6]
    r"(?::[0-9]{1,5})?"  # optional :port
)
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_COMMAND_RE = re.compile(r"(?!-)[A-Za-z0-9._/~+-]{1,4096}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str) -> str:
    """Validate a name (device, site, sweep, model id, label) against ``NAME_PATTERN``."""
    if not _NAME_RE.fullmatch(value):
        raise ValueError(f"invalid name {short_repr(value)}: use {NAME_RULE}")
    return value


def _pattern_check(pattern: re.Pattern[str], label: str,
                   expected: str) -> Callable[[str], str]:
    """A validator that accepts values matching ``pattern`` and explains the rule otherwise."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"invalid {label} {short_repr(value)}: expected {expected}")
        return value

    return check


_check_host = _pattern_check(
    _HOST_RE, "host",
    "a host name or IP address (letters, digits, '.', '-', ':'), not starting with '-'")
_check_user = _pattern_check(
    _USER_RE, "user",
    "a login name (letters, digits, '.', '_', '-'; starting with a letter or '_'; at most "
    "32 characters)")


def _check_proxy_jump(value: str) -> str:
    hops = value.split(",")
    if not all(_JUMP_HOP_RE.fullmatch(hop) for hop in hops):
        raise ValueError(
            f"invalid proxy_jump {short_repr(value)}: expected [user@]host[:port], "
            "several separated by ','"
        )
    return value


_check_env_name = _pattern_check(
    _ENV_RE, "environment variable name",
    "letters, digits and '_', not starting with a digit")


def check_path(value: str) -> str:
    """Validate a path on a device: non-empty, no control characters, no leading '-'.

    Spaces are allowed (macOS paths have them); transports quote paths. A
    leading '-' would be read as an option by the commands paths are passed to.
    """
    if not value or len(value) > 4096 or _CONTROL_RE.search(value) or value.startswith("-"):
        raise ValueError(
            f"invalid path {short_repr(value)}: expected a non-empty path without "
            "control characters, not starting with '-'"
        )
    return value


def _check_command(value: str) -> str:
    if not _COMMAND_RE.fullmatch(value):
        raise ValueError(
            f"invalid command {short_repr(value)}: expected a program name or path "
            "(letters, digits, '.', '_', '/', '~', '+', '-'; no spaces), not starting with '-'"
        )
    return value


def as_list(value: Any) -> Any:
    """Accept a single scalar where a list is expected (``dense: x`` == ``dense: [x]``)."""
    if isinstance(value, str | int | float | bool):
        return [value]
    return value


Name = Annotated[str, AfterValidator(check_name)]
LabelKey = Annotated[str, AfterValidator(check_name)]
LabelValue = Annotated[str, AfterValidator(check_name)]
DevicePath = Annotated[str, AfterValidator(check_path)]
Host = Annotated[str, AfterValidator(_check_host)]
User = Annotated[str, AfterValidator(_check_user)]
ProxyJump = Annotated[str, AfterValidator(_check_proxy_jump)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Command = Annotated[str, AfterValidator(_check_command)]


class ConfigModel(BaseModel):
    """Base of every configuration model.

    ``extra="forbid"`` turns a misspelt key into an error instead of a
    silently ignored setting; ``strict`` stops YAML's guesses (``yes`` ->
    True, ``1.10`` -> 1.1) and pydantic's coercions (True -> 1, "22" -> 22)
    from passing as valid values; ``frozen`` because a loaded configuration is
    shared by the planner, scheduler and reports and must not drift.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def __eq__(self, other: object) -> bool:
        # Compare the configuration only: pydantic's default would also
        # compare private attributes, so the same inventory loaded from two
        # files (or rebuilt from a stored dump) would compare unequal.
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__


def duplicate_problems(values: Sequence[str], section: str, field: str,
                       what: str) -> list[tuple[Sequence[LocPart], str]]:
    """A located problem for every value already used earlier in ``section``."""
    first: dict[str, int] = {}
    problems: list[tuple[Sequence[LocPart], str]] = []
    for index, value in enumerate(values):
        if value in first:
            problems.append(((section, index, field),
                             f"duplicate {what} {value!r} (first used by "
                             f"{section}[{first[value]}])"))
        else:
            first[value] = index
    return problems


class FileModel(ConfigModel):
    """A configuration that is a whole file (an inventory, a sweep).

    It remembers the parsed file, so checks that need another file (a sweep
    naming devices of an inventory) can still point at the right line.
    """

    _loaded: LoadedYaml | None = PrivateAttr(default=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Load and validate a file; problems raise ``ConfigError`` at file:line:col."""
        return cls.from_loaded(load_yaml(path))

    @classmethod
    def from_loaded(cls, loaded: LoadedYaml) -> Self:
        """Validate an already-parsed file, remembering it for later located messages."""
        model = validate_loaded(cls, loaded)
        model._loaded = loaded
        return model

    @property
    def source(self) -> LoadedYaml | None:
        """The parsed file this came from (``None`` when built in code)."""
        return self._loaded

    @property
    def source_path(self) -> str | None:
        """Path of the file this came from (``None`` when built in code)."""
        return self._loaded.path if self._loaded else None


def _find_password_keys(value: Any, at: tuple[LocPart, ...] = ()) -> list[tuple[LocPart, ...]]:
    """Paths of every key that looks like a password, at any depth."""
    found: list[tuple[LocPart, ...]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            lowered = str(key).lower()
            if lowered in ("password", "passwd") or lowered.endswith("_password"):
                found.append((*at, key))
            else:
                found.extend(_find_password_keys(item, (*at, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_find_password_keys(item, (*at, index)))
    return found


MetricsPath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]{0,127}$")]


class DeviceExporter(ConfigModel):
    """A Prometheus exporter the device runs itself (node_exporter, ``macmon serve``, a jtop
    exporter), scraped by the Prometheus of ``edgefarm monitor up`` through the file-based
    discovery targets it writes."""

    name: Name = Field(
        description="What it is, for the `exporter` label: e.g. `node_exporter`, `macmon`, "
                    "`jtop`.")
    port: int = Field(ge=1, le=65535, description="TCP port it listens on, on the device's host.")
    path: MetricsPath = Field(
        default="/metrics", description="HTTP path of its metrics (`/metrics` for most).")


class Device(ConfigModel):
    """One benchmarked machine and how to reach it."""

    name: Name = Field(
        description=(
            f"Unique device name ({NAME_RULE}). Sweeps select devices by it and results "
            "are stored under it."
        ),
    )
    transport: Transport = Field(
        description=(
            "How the controller reaches the device: `local` runs the agent on the "
            "controller machine itself, `ssh` connects with host/user/identity_file."
        ),
    )
    site: Name = Field(
        default="local",
        description=(
            "Which Ray node (gateway) reaches the device. Devices behind the same gateway "
            "share a site; `local` is the controller's own node."
        ),
    )
    platform: Platform = Field(
        description=(
            "Hardware family: `apple-silicon` (Metal), `jetson` (CUDA on Tegra), "
            "`nvidia-gpu` (discrete CUDA GPU) or `linux-cpu` (CPU only). Sweeps can "
            "select by it and reports group by it."
        ),
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        description=(
            "Free-form `key: value` tags (e.g. `ram: 8gb`, `role: controller`) that sweeps "
            "can select on. Keys and values follow the name rule; quote numbers."
        ),
    )
    python: Command = Field(
        default="python3",
        description=(
            "Python interpreter (3.8 or newer) that runs the agent on the device: a "
            "command on PATH or an absolute path, e.g. `/usr/bin/python3`. A `local` "
            "device that leaves it unset uses the controller's own interpreter, which "
            "has the xllamacpp wheel edgefarm installs."
        ),
    )
    llama_bench: DevicePath | None = Field(
        default=None,
        description=(
            "Path of a `llama-bench` binary on the device. When set, backend `auto` uses "
            "it; when null, `auto` uses the xllamacpp Python package on the device."
        ),
    )
    models_dir: DevicePath = Field(
        default="~/.cache/edgefarm/models",
        description=(
            "Directory on the device where GGUF model files are created or looked up; "
            "`~` is the remote user's home. Needs room for every model a sweep uses."
        ),
    )
    work_dir: DevicePath = Field(
        default="~/.cache/edgefarm",
        description=(
            "Directory on the device for the agent bundle cache and per-job working "
            "directories (event logs, outputs)."
        ),
    )
    host: Host | None = Field(
        default=None,
        description="ssh only, required: host name or IP address of the device.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description=(
            f"ssh only: TCP port of the device's ssh server (default {DEFAULT_SSH_PORT} "
            "for ssh devices; stays null for local ones)."
        ),
    )
    user: User | None = Field(
        default=None,
        description="ssh only, required: login name on the device.",
    )
    exporters: list[DeviceExporter] | None = Field(
        default=None,
        description=(
            "Prometheus exporters the device runs itself, scraped through file-based "
            "discovery that `edgefarm monitor up` writes (ssh devices with a host). Null: "
            "the platform's usual one (`macmon serve` on port 9090 for `apple-silicon`, "
            "node_exporter on 9100 otherwise); `[]`: none."
        ),
    )
    identity_file: DevicePath | None = Field(
        default=None,
        description=(
            "ssh only: private key file on the machine that runs the device's site gateway "
            "(the controller for site `local`; the site's Ray node otherwise), `~` expanded "
            "there. When null, keys offered by ssh-agent are used."
        ),
    )
    proxy_jump: ProxyJump | None = Field(
        default=None,
        description=(
            "ssh only: bastion host(s) to connect through, as `[user@]host[:port]`, "
            "several separated by commas (like ssh's ProxyJump)."
        ),
    )
    passphrase_env: EnvName | None = Field(
        default=None,
        description=(
            "ssh only: name of an environment variable that holds the passphrase of "
            "identity_file, read where the site's gateway runs (the controller for site "
            "`local`, the site's Ray node otherwise: set it in that node's `ray start` "
            "environment). The passphrase itself never goes in the file."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_passwords(cls, data: Any) -> Any:
        """Refuse a password before anything else, wherever it hides in the device."""
        found = _find_password_keys(data)
        if found:
            raise LocatedValueError.many([(at, PASSWORD_MESSAGE) for at in found])
        if isinstance(data, dict) and data.get("transport") == "ssh" and "port" not in data:
            # Filled in here rather than as the field default so that a local
            # device (which must not set a port) dumps and re-validates cleanly.
            data = {**data, "port": DEFAULT_SSH_PORT}
        return data

    @model_validator(mode="after")
    def _check_transport_fields(self) -> Device:
        """ssh needs somewhere to connect; local must not carry ssh settings it would ignore."""
        problems: list[tuple[Sequence[LocPart], str]] = []
        if self.transport == "ssh":
            for required in ("host", "user"):
                if getattr(self, required) is None:
                    problems.append(((required,), "field required when transport is 'ssh'"))
            if self.passphrase_env is not None and self.identity_file is None:
                problems.append(
                    (("passphrase_env",), "passphrase_env needs identity_file (the key it unlocks)")
                )
        else:
            for ssh_only in SSH_ONLY_FIELDS:
                if getattr(self, ssh_only) is not None:
                    problems.append(
                        (
                            (ssh_only,),
                            f"{ssh_only!r} is only allowed with transport 'ssh' "
                            f"(this device has transport {self.transport!r})",
                        )
                    )
        if problems:
            raise LocatedValueError.many(problems)
        return self

    def describe(self) -> str:
        """Short human description for messages: ``jetson-1 (jetson, ssh bench@10.0.0.5)``."""
        if self.transport == "ssh":
            return f"{self.name} ({self.platform}, ssh {self.user}@{self.host}:{self.port})"
        return f"{self.name} ({self.platform}, local)"


class DeviceSelector(ConfigModel):
    """Which inventory devices a sweep runs on; every given key must match."""

    names: list[Name] | None = Field(
        default=None,
        min_length=1,
        description="Device names to run on (a single name is also accepted).",
    )
    platform: list[Platform] | None = Field(
        default=None,
        min_length=1,
        description="Platforms to run on, e.g. `[jetson, apple-silicon]` (a single value is "
        "also accepted).",
    )
    labels: dict[LabelKey, LabelValue] | None = Field(
        default=None,
        min_length=1,
        description="Labels a device must all carry with these exact values.",
    )

    @model_validator(mode="before")
    @classmethod
    def _scalars_to_lists(cls, data: Any) -> Any:
        """Let ``names: local`` stand for ``names: [local]``; one device is the common case."""
        if isinstance(data, dict):
            return {
                k: (as_list(v) if k in ("names", "platform") else v) for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> DeviceSelector:
        """An empty selector would silently mean 'nothing' or 'everything'; make it explicit."""
        if self.names is None and self.platform is None and self.labels is None:
            raise ValueError(
                "a device selector needs at least one of: names, platform, labels"
            )
        return self

    def matches(self, device: Device) -> bool:
        """Whether ``device`` satisfies every key of this selector."""
        if self.names is not None and device.name not in self.names:
            return False
        if self.platform is not None and device.platform not in self.platform:
            return False
        if self.labels is not None:
            return all(device.labels.get(k) == v for k, v in self.labels.items())
        return True


class Inventory(FileModel):
    """Every device the controller may use, loaded from one inventory file."""

    devices: list[Device] = Field(
        min_length=1,
        description="The devices, in the order plans and reports list them.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Inventory:
        """Names key results and selections, so two devices may not share one."""
        problems = duplicate_problems([d.name for d in self.devices], "devices", "name",
                                      "device name")
        if problems:
            raise LocatedValueError.many(problems)
        return self

    @property
    def names(self) -> list[str]:
        """Device names in file order."""
        return [d.name for d in self.devices]

    def check_key_files(self, names: Sequence[str] | None = None) -> None:
        """Check the identity files of this controller's ssh devices; ``ConfigError`` if unusable.

        Kept out of model validation on purpose: an inventory is also read
        where the keys are not (``inventory list``, a stored sweep, a gateway
        on another node). Commands that are about to connect, and ``inventory
        validate``, call it so that a missing file, a directory, a file that is
        not a private key, an unset ``passphrase_env`` or a wrong passphrase is
        reported at its line and exits 2, instead of looking like a network
        failure that is retried for minutes. Devices of other sites are skipped:
        their key lives on that site's node, not here.
        """
        from orchestrator.transport.ssh import KeyFileError, load_private_key

        problems: list[ConfigProblem] = []
        for index, device in enumerate(self.devices):
            if names is not None and device.name not in names:
                continue
            if device.identity_file is None or device.site != "local":
                continue
            try:
                load_private_key(device.identity_file, device.passphrase_env)
            except KeyFileError as exc:
                problems.append(problem_at(self._loaded, ("devices", index, "identity_file"),
                                           str(exc)))
        if problems:
            raise ConfigError.from_problems(problems)

    def device(self, name: str) -> Device:
        """The device called ``name``; an unknown name raises ``ConfigError`` listing known ones."""
        for device in self.devices:
            if device.name == name:
                return device
        raise ConfigError(
            f"unknown device {short_repr(name)}; known devices: {', '.join(self.names)}",
            path=self.source_path,
        )

    def select(self, selector: DeviceSelector | Mapping[str, Any]) -> list[Device]:
        """Devices matching ``selector``, in inventory order (possibly none).

        A mapping is validated as a ``DeviceSelector`` first, so the CLI can
        pass ``{"platform": ["jetson"]}``. Unknown names simply match nothing
        here; ``load_sweep_with_inventory`` and ``plan`` report them.
        """
        if not isinstance(selector, DeviceSelector):
            selector = DeviceSelector.model_validate(dict(selector))
        return [d for d in self.devices if selector.matches(d)]
