"""Inventory and sweep files: what is accepted, and where each mistake is reported.

Most tests feed one broken file and assert the exact ``file:line:col: key.path:
message`` line, because pointing at the right line is the point of the loader:
a user with a 200-line inventory must not have to hunt.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from orchestrator.config import (
    KNOWN_PRESETS,
    DeviceSelector,
    Inventory,
    Sweep,
    load_sweep_with_inventory,
    load_yaml,
)
from orchestrator.config.reference import DOC_TABLES, render_doc
from orchestrator.config.yaml_loader import Mark, validate
from orchestrator.errors import (
    AgentError,
    ConfigError,
    ConfigProblem,
    EdgefarmError,
    JobError,
    StoreError,
    TransportError,
)

REPO = Path(__file__).resolve().parent.parent

LOCAL_INVENTORY = """\
devices:
  - name: local
    transport: local
    platform: linux-cpu
"""

MINIMAL_SWEEP = """\
name: s
models:
  - id: m
    arch: moe
    source: {preset: tiny-moe}
devices: {names: [local]}
"""


def write(tmp_path: Path, text: str, name: str = "file.yaml") -> Path:
    """Write ``text`` (dedented) to a file under ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def inventory_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Inventory.load(path)
    return info.value


def sweep_error(sweep: Path, inventory: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        if inventory is None:
            Sweep.load(sweep)
        else:
            load_sweep_with_inventory(sweep, inventory)
    return info.value


def lines(err: ConfigError) -> list[str]:
    return str(err).splitlines()


# -- errors --------------------------------------------------------------------


def test_config_error_renders_file_line_col_key_and_message() -> None:
    err = ConfigError(
        "Input should be a valid integer",
        path="inventory/devices.yaml",
        line=14,
        column=5,
        key_path="devices[2].port",
    )
    assert str(err) == (
        "inventory/devices.yaml:14:5: devices[2].port: Input should be a valid integer"
    )
    assert (err.path, err.line, err.column) == ("inventory/devices.yaml", 14, 5)
    assert err.key_path == "devices[2].port"
    assert err.message == "Input should be a valid integer"
    assert isinstance(err, ValueError) and isinstance(err, EdgefarmError)


def test_config_error_without_line_or_key() -> None:
    assert str(ConfigError("file not found", path="x.yaml")) == "x.yaml: file not found"
    assert str(ConfigError("bad", key_path="a.b")) == "a.b: bad"


def test_config_error_bundles_problems_sorted_one_per_line() -> None:
    err = ConfigError.from_problems(
        [
            ConfigProblem("f.yaml", 9, 3, "b", "second"),
            ConfigProblem("f.yaml", 2, 1, "a", "first"),
        ]
    )
    assert lines(err) == ["f.yaml:2:1: a: first", "f.yaml:9:3: b: second"]
    assert (err.line, err.key_path) == (2, "a")


def test_config_error_survives_pickling() -> None:
    # Ray moves exceptions between processes by pickling them.
    err = ConfigError.from_problems([ConfigProblem("f.yaml", 1, 2, "k", "m")])
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.problems == err.problems


def test_other_errors_derive_from_root_and_builtins() -> None:
    assert issubclass(TransportError, OSError)
    for cls in (AgentError, JobError, StoreError):
        assert issubclass(cls, RuntimeError)
    for cls in (TransportError, AgentError, JobError, StoreError, ConfigError):
        assert issubclass(cls, EdgefarmError)


# -- YAML loading --------------------------------------------------------------


def test_malformed_yaml_reports_yaml_position(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: a
           transport: local
        """,
    )
    err = inventory_error(path)
    assert str(err).startswith(f"{path}:3:4: ")
    assert "expected <block end>" in str(err)


def test_unclosed_flow_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "devices: [{name: a\n")
    err = inventory_error(path)
    assert err.path == str(path) and err.line == 2


def test_tab_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "devices:\n\t- name: a\n")
    err = inventory_error(path)
    assert str(err).startswith(f"{path}:2:1: ")
    assert "\\t" in str(err) or "tab" in str(err)


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "devices: []\n")
    assert lines(inventory_error(path)) == [
        f"{path}:5:1: devices: duplicate key 'devices' (first defined at line 1)"
    ]


def test_duplicate_nested_keys_all_reported_with_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: a
            transport: local
            platform: linux-cpu
            name: b
            labels: {x: "1", x: "2"}
        """,
    )
    assert lines(inventory_error(path)) == [
        f"{path}:5:5: devices[0].name: duplicate key 'name' (first defined at line 2)",
        f"{path}:6:22: devices[0].labels.x: duplicate key 'x' (first defined at line 6)",
    ]


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - &base {name: a, transport: local, platform: linux-cpu}
          - <<: *base
            name: b
        """,
    )
    assert Inventory.load(path).names == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty; expected a YAML mapping"),
        ("# only a comment\n", "file is empty; expected a YAML mapping"),
        ("~\n", "file is empty; expected a YAML mapping"),
    ],
)
def test_empty_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert str(inventory_error(path)) == f"{path}: {message}"


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: a\n")
    assert str(inventory_error(path)) == (
        f"{path}:1:1: top level must be a mapping of keys to values, found a list"
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(inventory_error(missing)) == f"{missing}: file not found"
    assert str(inventory_error(tmp_path)) == f"{tmp_path}: is a directory, expected a YAML file"


def test_invalid_utf8_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"devices:\n  - name: caf\xe9\n")
    assert str(inventory_error(path)) == f"{path}:2:14: file is not valid UTF-8"


def test_multiple_documents_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "---\n" + LOCAL_INVENTORY)
    err = inventory_error(path)
    assert err.line == 5 and "expected a single document" in str(err)


def test_alias_bomb_refused_quickly(tmp_path: Path) -> None:
    # Nine lines that would expand to 10**9 strings if validated naively.
    text = 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]\n'
    for level in range(1, 9):
        refs = ",".join([f"*a{level - 1}"] * 10)
        text += f"a{level}: &a{level} [{refs}]\n"
    path = write(tmp_path, text)
    assert str(inventory_error(path)) == (
        f"{path}: file expands to more than 200000 values (alias bomb?)"
    )


def test_recursive_alias_refused(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY.replace("devices:", "devices: &d") + "    x: *d\n")
    assert str(inventory_error(path)) == (
        f"{path}:1:10: recursive alias: this value contains itself"
    )


def test_generic_validate(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY)
    assert validate(Inventory, path).names == ["local"]


def test_load_yaml_keeps_key_and_value_marks(tmp_path: Path) -> None:
    path = write(tmp_path, "a:\n  b: [1, 2]\n")
    loaded = load_yaml(path)
    assert loaded.data == {"a": {"b": [1, 2]}}
    assert loaded.locate(("a", "b", 1)) == Mark(line=2, column=10)
    # Unknown trailing segments fall back to the nearest node that exists
    # (for a mapping entry, the position of its key).
    assert loaded.locate(("a", "b", "missing")) == Mark(line=2, column=3)
    assert loaded.locate(("nothing", "here")) == Mark(line=1, column=1)


# -- inventory -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["local.yaml", "devices.example.yaml"])
def test_shipped_inventories_validate(name: str) -> None:
    inventory = Inventory.load(REPO / "inventory" / name)
    assert "local" in inventory.names
    local = inventory.device("local")
    assert (local.transport, local.platform, local.site) == ("local", "linux-cpu", "local")


def test_example_inventory_contents() -> None:
    inventory = Inventory.load(REPO / "inventory" / "devices.example.yaml")
    platforms = {d.platform for d in inventory.devices}
    assert platforms == {"apple-silicon", "jetson", "nvidia-gpu", "linux-cpu"}
    mac = next(d for d in inventory.devices if d.platform == "apple-silicon")
    assert mac.python == "/usr/bin/python3" and mac.transport == "ssh"
    jetson = next(d for d in inventory.devices if d.platform == "jetson")
    assert jetson.llama_bench and jetson.llama_bench.endswith("/llama-bench")
    assert jetson.labels["ram"] == "8gb"
    assert all(d.port == 22 for d in inventory.devices if d.transport == "ssh")


def test_defaults(tmp_path: Path) -> None:
    device = Inventory.load(write(tmp_path, LOCAL_INVENTORY)).devices[0]
    assert device.site == "local"
    assert device.python == "python3"
    assert device.llama_bench is None
    assert device.models_dir == "~/.cache/edgefarm/models"
    assert device.work_dir == "~/.cache/edgefarm"
    assert device.labels == {} and device.port is None


def test_wrong_type_reported_at_key(tmp_path: Path) -> None:
    # Mirrors the example in the brief: line 14, column 5, devices[2].port.
    path = write(
        tmp_path,
        """\
        devices:
          - name: a
            transport: local
            platform: linux-cpu
          - name: b
            transport: local
            platform: linux-cpu
          - name: c
            transport: ssh
            platform: jetson
            host: 192.0.2.1
            user: bench
            # the port below is not a number
            port: abc
        """,
        name="devices.yaml",
    )
    assert lines(inventory_error(path)) == [
        f"{path}:14:5: devices[2].port: Input should be a valid integer"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port: true", "devices[0].port: Input should be a valid integer"),
        ('port: "22"', "devices[0].port: Input should be a valid integer"),
        ("port: 70000", "devices[0].port: Input should be less than or equal to 65535"),
        ("port: 0", "devices[0].port: Input should be greater than or equal to 1"),
        ("user: [a, b]", "devices[0].user: Input should be a valid string"),
        ("user: {a: b}", "devices[0].user: Input should be a valid string"),
        ("labels: [a]", "devices[0].labels: expected a mapping of keys to values, found a list"),
        (
            "labels: {cuda: 12.2}",
            "devices[0].labels.cuda: Input should be a valid string, found a number; "
            "put the value in quotes",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, message: str) -> None:
    path = write(
        tmp_path,
        "devices:\n"
        "  - name: c\n"
        "    transport: ssh\n"
        "    platform: jetson\n"
        "    host: h\n"
        + ("" if line.startswith("user") else "    user: u\n")
        + f"    {line}\n",
    )
    err = inventory_error(path)
    assert len(err.problems) == 1
    line_no = 6 if line.startswith("user") else 7
    assert err.line == line_no
    assert str(err).startswith(f"{path}:{line_no}:")
    assert str(err).endswith(message)


def test_device_entry_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "  - just-a-name\n")
    assert lines(inventory_error(path)) == [
        f"{path}:5:5: devices[1]: expected a mapping of keys to values, found a string"
    ]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "defaults: {}\n")
    assert lines(inventory_error(path)) == [
        f"{path}:5:1: defaults: unknown key 'defaults' (allowed keys: devices)"
    ]


def test_unknown_nested_key_suggests_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "    platfrom: jetson\n")
    (line,) = lines(inventory_error(path))
    assert line.startswith(
        f"{path}:5:5: devices[0].platfrom: unknown key 'platfrom'; did you mean 'platform'? "
        "(allowed keys: exporters, host, identity_file, labels,"
    )


def test_missing_required_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: a
            transport: local
            platform: linux-cpu
          - labels: {x: y}
            transport: local
        """,
    )
    assert lines(inventory_error(path)) == [
        f"{path}:5:5: devices[1].name: field required",
        f"{path}:5:5: devices[1].platform: field required",
    ]


def test_missing_devices_and_empty_list(tmp_path: Path) -> None:
    path = write(tmp_path, "devices: []\n")
    assert lines(inventory_error(path)) == [
        f"{path}:1:1: devices: List should have at least 1 item after validation, not 0"
    ]
    path = write(tmp_path, "other: 1\n")
    assert f"{path}:1:1: devices: field required" in lines(inventory_error(path))


def test_unknown_transport_lists_known(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY.replace("transport: local", "transport: telnet"))
    assert lines(inventory_error(path)) == [
        f"{path}:3:5: devices[0].transport: unknown value 'telnet'; expected 'local' or 'ssh'"
    ]


def test_unknown_platform_lists_known(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY.replace("linux-cpu", "windows"))
    assert lines(inventory_error(path)) == [
        f"{path}:4:5: devices[0].platform: unknown value 'windows'; expected "
        "'apple-silicon', 'jetson', 'nvidia-gpu' or 'linux-cpu'"
    ]


def test_duplicate_device_names_reported_at_second(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        LOCAL_INVENTORY
        + "  - name: other\n    transport: local\n    platform: linux-cpu\n"
        + "  - name: local\n    transport: local\n    platform: linux-cpu\n",
    )
    assert lines(inventory_error(path)) == [
        f"{path}:8:5: devices[2].name: duplicate device name 'local' (first used by devices[0])"
    ]


PASSWORD = (
    "passwords are not accepted in inventory files; use identity_file, ssh-agent or "
    "passphrase_env"
)


def test_password_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: pi
            transport: ssh
            platform: linux-cpu
            host: pi.local
            user: pi
            password: raspberry
        """,
    )
    assert lines(inventory_error(path)) == [f"{path}:7:5: devices[0].password: {PASSWORD}"]


def test_password_refused_even_nested(tmp_path: Path) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + "    labels: {password: hunter2}\n")
    assert lines(inventory_error(path)) == [
        f"{path}:5:14: devices[0].labels.password: {PASSWORD}"
    ]


def test_ssh_requires_host_and_user(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: mac
            transport: ssh
            platform: apple-silicon
        """,
    )
    assert lines(inventory_error(path)) == [
        f"{path}:2:5: devices[0].host: field required when transport is 'ssh'",
        f"{path}:2:5: devices[0].user: field required when transport is 'ssh'",
    ]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("host: 192.0.2.1", "host"),
        ("user: bench", "user"),
        ("port: 22", "port"),
        ("identity_file: ~/.ssh/id", "identity_file"),
        ("proxy_jump: a@b:22", "proxy_jump"),
        ("passphrase_env: PASS", "passphrase_env"),
    ],
)
def test_local_forbids_ssh_fields(tmp_path: Path, extra: str, key: str) -> None:
    path = write(tmp_path, LOCAL_INVENTORY + f"    {extra}\n")
    assert lines(inventory_error(path)) == [
        f"{path}:5:5: devices[0].{key}: '{key}' is only allowed with transport 'ssh' "
        "(this device has transport 'local')"
    ]


def test_passphrase_env_needs_identity_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: mac
            transport: ssh
            platform: apple-silicon
            host: mac.local
            user: bench
            passphrase_env: KEY_PASS
        """,
    )
    assert lines(inventory_error(path)) == [
        f"{path}:7:5: devices[0].passphrase_env: passphrase_env needs identity_file "
        "(the key it unlocks)"
    ]


HOSTILE = ["a;rm -rf /", "$(id)", "`id`", "-rf", "a b", "a/b", "..", "", "x" * 64, "naïve", "a\nb"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_device_names_rejected(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "inv.yaml"
    # json.dumps-style quoting is valid YAML for any of these strings.
    quoted = '"' + bad.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    path.write_text(LOCAL_INVENTORY.replace("name: local", f"name: {quoted}"), encoding="utf-8")
    assert lines(inventory_error(path)) == [
        f"{path}:2:5: devices[0].name: invalid name {bad!r}: use 1-63 characters: letters, "
        "digits, '.', '_' or '-', starting with a letter or digit"
    ]


@pytest.mark.parametrize(
    ("line", "key", "start"),
    [
        ('host: "-oProxyCommand=sh"', "host", "invalid host '-oProxyCommand=sh'"),
        ('host: "a b"', "host", "invalid host 'a b'"),
        ('user: "root;id"', "user", "invalid user 'root;id'"),
        ('proxy_jump: "-J x"', "proxy_jump", "invalid proxy_jump '-J x'"),
        ('identity_file: "-i"', "identity_file", "invalid path '-i'"),
        ('python: "python3 -c evil"', "python", "invalid command 'python3 -c evil'"),
        ('python: "$(id)"', "python", "invalid command '$(id)'"),
        ('models_dir: "/tmp/a\\nb"', "models_dir", "invalid path '/tmp/a\\nb'"),
        ('passphrase_env: "A-B"', "passphrase_env", "invalid environment variable name 'A-B'"),
        ('site: "lab 1"', "site", "invalid name 'lab 1'"),
        ('labels: {"ram size": 8gb}', "labels.ram size", "invalid name 'ram size'"),
    ],
)
def test_hostile_device_strings_rejected(tmp_path: Path, line: str, key: str, start: str) -> None:
    fields = {"host": "host: h", "user": "user: u", "identity_file": "identity_file: ~/.ssh/k"}
    fields[line.split(":")[0]] = line
    text = "devices:\n  - name: d\n    transport: ssh\n    platform: jetson\n"
    text += "".join(f"    {f}\n" for f in fields.values())
    path = write(tmp_path, text)
    (problem,) = inventory_error(path).problems
    assert problem.key_path == f"devices[0].{key}"
    assert problem.message.startswith(start)
    assert problem.line == text.splitlines().index(f"    {line}") + 1


def test_valid_ssh_strings_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: jetson.lab-1_b
            transport: ssh
            platform: jetson
            host: fe80::1
            port: 2222
            user: _bench.user-1
            identity_file: ~/.ssh/My Keys/id_ed25519
            proxy_jump: ops@bastion.example.org:2222,[2001:db8::1]:22
            passphrase_env: EDGEFARM_KEY_PASS
            python: /opt/venv-3.8/bin/python3.8
            models_dir: "/Volumes/Fast SSD/models"
            labels: {ram: 8gb, jetpack: "6.1"}
        """,
    )
    device = Inventory.load(path).devices[0]
    assert device.port == 2222 and device.labels == {"ram": "8gb", "jetpack": "6.1"}


def test_all_problems_of_a_file_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        devices:
          - name: "bad name"
            transport: local
            platform: linux-cpu
          - name: ok
            transport: teleport
            platform: linux-cpu
            colour: blue
        """,
    )
    err = inventory_error(path)
    assert [(p.line, p.key_path) for p in err.problems] == [
        (2, "devices[0].name"),
        (6, "devices[1].transport"),
        (8, "devices[1].colour"),
    ]
    assert all(line.startswith(f"{path}:") for line in lines(err))


def test_device_lookup_and_selection() -> None:
    inventory = Inventory.load(REPO / "inventory" / "devices.example.yaml")
    assert inventory.device("m2pro").platform == "apple-silicon"
    with pytest.raises(ConfigError, match="unknown device 'nope'; known devices: local, m2pro"):
        inventory.device("nope")
    assert [d.name for d in inventory.select(DeviceSelector(platform=["jetson"]))] == [
        "orin-nano"
    ]
    assert [d.name for d in inventory.select({"labels": {"ram": "8gb"}})] == ["orin-nano"]
    both = DeviceSelector(platform=["jetson", "nvidia-gpu"], labels={"ram": "64gb"})
    assert [d.name for d in inventory.select(both)] == ["rtx-box"]
    # Inventory order, whatever order the names are given in.
    by_name = DeviceSelector(names=["rtx-box", "local"])
    assert [d.name for d in inventory.select(by_name)] == ["local", "rtx-box"]
    assert inventory.select({"names": ["ghost"]}) == []


def test_inventory_round_trips_through_dumps() -> None:
    # The store keeps the inventory as JSON and the scheduler re-validates it.
    inventory = Inventory.load(REPO / "inventory" / "devices.example.yaml")
    for kwargs in ({}, {"exclude_unset": True}):
        dumped = inventory.model_dump(mode="json", **kwargs)  # type: ignore[arg-type]
        assert Inventory.model_validate(dumped) == inventory


# -- sweeps --------------------------------------------------------------------


@pytest.fixture()
def local_inventory(tmp_path: Path) -> Path:
    return write(tmp_path, LOCAL_INVENTORY, name="inventory.yaml")


@pytest.mark.parametrize("sweep", ["quickstart.yaml", "seed-shapes-local.yaml",
                                   "verdict-stability.yaml",
                                   "verdict-stability-norepack.yaml"])
@pytest.mark.parametrize("inventory", ["local.yaml", "devices.example.yaml"])
def test_shipped_sweeps_validate(sweep: str, inventory: str) -> None:
    loaded, _ = load_sweep_with_inventory(
        REPO / "sweeps" / sweep, REPO / "inventory" / inventory
    )
    assert loaded.devices.names == ["local"]


def test_quickstart_contents() -> None:
    sweep = Sweep.load(REPO / "sweeps" / "quickstart.yaml")
    assert [(m.id, m.arch, m.source.to_spec()) for m in sweep.models] == [
        ("tiny-moe", "moe", {"preset": "tiny-moe", "quant": "Q4_0"}),
        ("tiny-dense", "dense", {"preset": "tiny-dense", "quant": "Q4_0"}),
    ]
    assert [(p.moe, p.dense) for p in sweep.pairs] == [("tiny-moe", ["tiny-dense"])]
    m = sweep.matrix
    assert (m.prompt_tokens, m.gen_tokens, m.threads, m.gpu_layers) == ([64], [32], [2], [0])
    assert (sweep.repetitions, sweep.warmup, sweep.backend) == (8, 1, "auto")
    assert (sweep.timeout_s, sweep.retries) == (300, 1)


def test_seed_shapes_contents() -> None:
    sweep = Sweep.load(REPO / "sweeps" / "seed-shapes-local.yaml")
    assert [m.id for m in sweep.models] == ["olmoe-1b-7b", "llama-3.2-1b", "olmo-1b"]
    assert {m.source.quant for m in sweep.models} == {"Q4_0"}
    assert [(p.moe, p.dense) for p in sweep.pairs] == [
        ("olmoe-1b-7b", ["llama-3.2-1b", "olmo-1b"])
    ]
    assert sweep.timeout_s == 3600 and sweep.matrix.points()[0].prompt_tokens == 128
    assert sweep.repetitions_per_round == "auto"


def test_sweep_defaults_and_scalars(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_SWEEP
        + "pairs:\n  - {moe: m, dense: d}\n"
        + "matrix: {threads: 8}\n",
    )
    path.write_text(
        path.read_text().replace(
            "devices:", "  - {id: d, arch: dense, source: {path: /m/d.gguf}}\ndevices:"
        )
    )
    sweep = Sweep.load(path)
    assert sweep.pairs[0].dense == ["d"]
    assert sweep.matrix.threads == [8] and sweep.matrix.prompt_tokens == [128]
    assert sweep.models[0].source.quant == "Q4_0"
    assert sweep.models[1].source.to_spec() == {"path": "/m/d.gguf"}
    assert (sweep.repetitions, sweep.warmup, sweep.backend, sweep.retries) == (3, 1, "auto", 1)
    assert sweep.timeout_s == 600 and sweep.description == ""


def test_sweep_unknown_keys_top_level_and_nested(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP + "matrix:\n  thread: [2]\nrepetition: 3\n")
    (first, second) = lines(sweep_error(path))
    assert first == (
        f"{path}:8:3: matrix.thread: unknown key 'thread'; did you mean 'threads'? "
        "(allowed keys: gen_tokens, gpu_layers, prompt_tokens, threads)"
    )
    assert second.startswith(
        f"{path}:9:1: repetition: unknown key 'repetition'; did you mean 'repetitions'?"
    )


def test_sweep_unknown_key_in_source(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("tiny-moe}", "tiny-moe, q: F16}"))
    assert lines(sweep_error(path)) == [
        f"{path}:5:32: models[0].source.q: unknown key 'q' (allowed keys: hf_dir, path, "
        "preset, quant, seed)"
    ]


def test_sweep_missing_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "name: s\nmodels:\n  - id: m\n    arch: moe\n")
    assert lines(sweep_error(path)) == [
        f"{path}:1:1: devices: field required",
        f"{path}:3:5: models[0].source: field required",
    ]


def test_unknown_preset_lists_known(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("preset: tiny-moe", "preset: mixtral-8x7b"))
    assert lines(sweep_error(path)) == [
        f"{path}:5:14: models[0].source.preset: unknown preset 'mixtral-8x7b'; known presets: "
        + ", ".join(KNOWN_PRESETS)
    ]


def test_unknown_quant(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("tiny-moe}", "tiny-moe, quant: Q5_K_M}"))
    assert lines(sweep_error(path)) == [
        f"{path}:5:32: models[0].source.quant: unknown value 'Q5_K_M'; expected 'F16', 'Q8_0' "
        "or 'Q4_0'"
    ]


@pytest.mark.parametrize(
    ("source", "column", "key", "message"),
    [
        ("{}", 5, "source", "give exactly one of 'preset', 'path' or 'hf_dir'"),
        ("{preset: tiny-moe, path: /m.gguf}", 5, "source", "give exactly one of 'preset'"),
        ("{path: /m.gguf, quant: F16}", 5, "source.quant", "'quant' is only allowed with 'preset'"),
        ("{path: /m.gguf, seed: 1}", 5, "source.seed", "'seed' is only allowed with 'preset'"),
        ("{path: models/m.gguf}", 14, "source.path", "model path 'models/m.gguf' must be absolute"),
        ("{path: /m.bin}", 14, "source.path", "model path '/m.bin' must name a .gguf file"),
        ("{preset: tiny-moe, seed: -1}", 5, "source.seed", "Input should be greater than"),
        ("tiny-moe", 5, "source", "expected a mapping of keys to values, found a string"),
    ],
)
def test_bad_sources(tmp_path: Path, source: str, column: int, key: str, message: str) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("{preset: tiny-moe}", source))
    (problem,) = sweep_error(path).problems
    assert problem.key_path == f"models[0].{key}"
    assert problem.message.startswith(message)
    assert problem.line == 5
    if key == "source":
        assert problem.column == column


def test_arch_must_match_preset(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("preset: tiny-moe", "preset: tiny-dense"))
    assert lines(sweep_error(path)) == [
        f"{path}:4:5: models[0].arch: preset 'tiny-dense' is a dense model, but arch is 'moe'"
    ]


def test_duplicate_model_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_SWEEP.replace(
            "devices:", "  - id: m\n    arch: dense\n    source: {preset: tiny-dense}\ndevices:"
        ),
    )
    assert lines(sweep_error(path)) == [
        f"{path}:6:5: models[1].id: duplicate model id 'm' (first used by models[0])"
    ]


IN_SWEEP = "models in this sweep: moe1, dense1"
EMPTY_LIST = "List should have at least 1 item after validation, not 0"
PAIRS_SWEEP = """\
name: s
models:
  - {id: moe1, arch: moe, source: {preset: tiny-moe}}
  - {id: dense1, arch: dense, source: {preset: tiny-dense}}
pairs:
  - moe: MOE
    dense: [DENSE]
devices: {names: [local]}
"""


@pytest.mark.parametrize(
    ("moe", "dense", "expected"),
    [
        ("ghost", "dense1", f"6:5: pairs[0].moe: unknown model 'ghost'; {IN_SWEEP}"),
        ("moe1", "ghost", f"7:13: pairs[0].dense[0]: unknown model 'ghost'; {IN_SWEEP}"),
        ("dense1", "dense1", "6:5: pairs[0].moe: model 'dense1' has arch 'dense', expected 'moe'"),
        ("moe1", "moe1", "7:13: pairs[0].dense[0]: model 'moe1' has arch 'moe', expected 'dense'"),
        ("moe1", "dense1, dense1", "7:21: pairs[0].dense[1]: duplicate dense model 'dense1' in "
         "this pair"),
        ("moe1", "", f"7:5: pairs[0].dense: {EMPTY_LIST}"),
    ],
)
def test_bad_pairs(tmp_path: Path, moe: str, dense: str, expected: str) -> None:
    path = write(tmp_path, PAIRS_SWEEP.replace("MOE", moe).replace("DENSE", dense))
    assert lines(sweep_error(path)) == [f"{path}:{expected}"]


def test_moe_paired_twice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        PAIRS_SWEEP.replace("MOE", "moe1").replace("DENSE", "dense1").replace(
            "devices:", "  - {moe: moe1, dense: dense1}\ndevices:"
        ),
    )
    assert lines(sweep_error(path)) == [
        f"{path}:8:6: pairs[1].moe: model 'moe1' is already paired in pairs[0]; list all its "
        "dense baselines there"
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("repetitions: 0", "7:1: repetitions: Input should be greater than or equal to 1"),
        ("warmup: -1", "7:1: warmup: Input should be greater than or equal to 0"),
        ("timeout_s: 0", "7:1: timeout_s: Input should be greater than 0"),
        ("timeout_s: 10m", "7:1: timeout_s: Input should be a valid number"),
        ("retries: -1", "7:1: retries: Input should be greater than or equal to 0"),
        ("repetitions: 2.5", "7:1: repetitions: Input should be a valid integer"),
        (
            "backend: vulkan",
            "7:1: backend: unknown value 'vulkan'; expected 'auto', 'xllamacpp', 'llama-bench', "
            "'torch' or 'sleep'",
        ),
        ("description: [a]", "7:1: description: Input should be a valid string"),
        ("matrix: {threads: [2, '4']}", "7:23: matrix.threads[1]: Input should be a valid integer"),
        ("matrix: {threads: [2, 2]}", "7:23: matrix.threads[1]: duplicate value 2"),
        ("matrix: {gen_tokens: 0}", "7:10: matrix.gen_tokens[0]: Input should be greater than or "
         "equal to 1"),
        ("matrix: {gpu_layers: {a: 1}}", "7:10: matrix.gpu_layers: expected a list, found a "
         "mapping"),
        ("matrix: {prompt_tokens: []}", f"7:10: matrix.prompt_tokens: {EMPTY_LIST}"),
        ("matrix: [64]", "7:1: matrix: expected a mapping of keys to values, found a list"),
    ],
)
def test_bad_sweep_values(tmp_path: Path, extra: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL_SWEEP + extra + "\n")
    assert lines(sweep_error(path)) == [f"{path}:{expected}"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_sweep_and_model_names_rejected(tmp_path: Path, bad: str) -> None:
    quoted = '"' + bad.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    path = tmp_path / "sweep.yaml"
    path.write_text(
        MINIMAL_SWEEP.replace("name: s", f"name: {quoted}").replace("id: m", f"id: {quoted}")
    )
    rule = "use 1-63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
    assert lines(sweep_error(path)) == [
        f"{path}:1:1: name: invalid name {bad!r}: {rule}",
        f"{path}:3:5: models[0].id: invalid name {bad!r}: {rule}",
    ]


def test_sweep_naming_unknown_device(tmp_path: Path, local_inventory: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_SWEEP.replace(
            "devices: {names: [local]}", "devices:\n  names:\n    - local\n    - jetson-9\n"
        ),
    )
    assert lines(sweep_error(path, local_inventory)) == [
        f"{path}:9:7: devices.names[1]: unknown device 'jetson-9'; known devices: local"
    ]


def test_sweep_selector_matching_nothing(tmp_path: Path, local_inventory: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL_SWEEP.replace("{names: [local]}", "{platform: jetson, labels: {ram: 8gb}}"),
    )
    assert lines(sweep_error(path, local_inventory)) == [
        f"{path}:6:1: devices: selects no device from the inventory {local_inventory}; it has: "
        "local (platform linux-cpu)"
    ]


def test_empty_selector(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_SWEEP.replace("{names: [local]}", "{}"))
    assert lines(sweep_error(path)) == [
        f"{path}:6:1: devices: a device selector needs at least one of: names, platform, labels"
    ]
    path = write(tmp_path, MINIMAL_SWEEP.replace("{names: [local]}", "{names: []}"))
    assert lines(sweep_error(path)) == [
        f"{path}:6:11: devices.names: List should have at least 1 item after validation, not 0"
    ]


def test_selector_accepts_scalars(tmp_path: Path, local_inventory: Path) -> None:
    selector = "{names: local, platform: linux-cpu}"
    path = write(tmp_path, MINIMAL_SWEEP.replace("{names: [local]}", selector))
    sweep, _ = load_sweep_with_inventory(path, local_inventory)
    assert sweep.devices.names == ["local"] and sweep.devices.platform == ["linux-cpu"]


def test_problems_in_both_files_reported_together(tmp_path: Path) -> None:
    inventory = write(tmp_path, LOCAL_INVENTORY + "    colour: red\n", name="inv.yaml")
    sweep = write(tmp_path, MINIMAL_SWEEP + "retries: many\n", name="sweep.yaml")
    assert [line.split(": ")[0] for line in lines(sweep_error(sweep, inventory))] == [
        f"{inventory}:5:5",
        f"{sweep}:7:1",
    ]


def test_cross_checks_run_only_after_both_files_are_valid(tmp_path: Path) -> None:
    inventory = write(tmp_path, LOCAL_INVENTORY, name="inv.yaml")
    sweep = write(
        tmp_path, MINIMAL_SWEEP.replace("[local]", "[ghost]") + "warmup: x\n", name="s.yaml"
    )
    assert lines(sweep_error(sweep, inventory)) == [
        f"{sweep}:7:1: warmup: Input should be a valid integer"
    ]


def test_sweep_round_trips_through_dumps() -> None:
    sweep = Sweep.load(REPO / "sweeps" / "seed-shapes-local.yaml")
    assert Sweep.model_validate(sweep.model_dump(mode="json")) == sweep


def test_presets_in_step_with_agent() -> None:
    import agents.models.synth as synth
    assert set(KNOWN_PRESETS) == set(synth.KNOWN_PRESETS)
    from orchestrator.config.sweep import QUANTS

    assert set(QUANTS) == set(synth.QUANTS)


def test_preset_archs_match_agent_shapes() -> None:
    import agents.models.presets as presets
    from orchestrator.config.sweep import PRESET_ARCH

    for name in KNOWN_PRESETS:
        is_moe = presets.PRESETS[name].n_expert > 0
        assert PRESET_ARCH[name] == ("moe" if is_moe else "dense"), name


@pytest.mark.parametrize("doc", sorted({d for _, d, _ in DOC_TABLES}))
def test_docs_field_tables_up_to_date(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    assert render_doc(text, doc) == text, (
        f"{doc} is stale: run `python -m orchestrator.config.reference --write`"
    )


def _key_inventory(tmp_path: Path, key: Path, extra: str = "", site: str = "local") -> Path:
    return write(
        tmp_path,
        f"""\
        devices:
          - name: box
            transport: ssh
            platform: linux-cpu
            host: 127.0.0.1
            user: bench
            identity_file: {key}
            site: {site}
        {extra}""",
    )


def _keygen(path: Path, passphrase: str = "") -> Path:
    from sshd_fixture import keygen

    keygen(path, passphrase=passphrase)
    return path


@pytest.mark.parametrize(
    ("case", "extra", "problem"),
    [
        ("missing", "", "does not exist"),
        ("directory", "", "is a directory, not a private key"),
        ("public", "", "is not a private key paramiko can read"),
        ("encrypted", "", "is encrypted; name the environment variable"),
        ("encrypted", "    passphrase_env: EDGEFARM_TEST_UNSET_PASS",
         "needs the passphrase in environment variable EDGEFARM_TEST_UNSET_PASS "
         "(passphrase_env), which is not set"),
        ("encrypted", "    passphrase_env: EDGEFARM_TEST_WRONG_PASS",
         "the passphrase in EDGEFARM_TEST_WRONG_PASS does not decrypt it"),
    ],
)
def test_validate_names_an_unusable_identity_file_at_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, extra: str,
        problem: str) -> None:
    """Key-file problems are configuration errors (exit 2, file:line), not network ones."""
    from helpers import edgefarm

    monkeypatch.delenv("EDGEFARM_TEST_UNSET_PASS", raising=False)
    monkeypatch.setenv("EDGEFARM_TEST_WRONG_PASS", "not-it")
    key = tmp_path / "id_key"
    if case == "directory":
        key.mkdir()
    elif case == "public":
        key = _keygen(key).with_name("id_key.pub")
    elif case == "encrypted":
        _keygen(key, passphrase="right-one")
    path = _key_inventory(tmp_path, key, extra)
    run = edgefarm("inventory", "validate", "-i", str(path), tmp=tmp_path)
    err = " ".join(run.stderr.split())
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{path}:7:5: devices[0].identity_file: identity file {key}" in err
    assert problem in err


def test_validate_accepts_usable_identity_files(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A decryptable key passes; a key for another site's node is not looked for here."""
    from helpers import edgefarm

    monkeypatch.setenv("EDGEFARM_TEST_RIGHT_PASS", "right-one")
    key = _keygen(tmp_path / "id_key", passphrase="right-one")
    good = _key_inventory(tmp_path, key, "    passphrase_env: EDGEFARM_TEST_RIGHT_PASS")
    run = edgefarm("inventory", "validate", "-i", str(good), tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    remote = _key_inventory(tmp_path, tmp_path / "on-the-lab-node", site="lab")
    run = edgefarm("inventory", "validate", "-i", str(remote), tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


# -- input bounds (issue 10, item 8) --------------------------------------------


def test_nul_byte_is_a_located_config_error(tmp_path: Path) -> None:
    """A NUL byte is reported at its file:line:col, not as an unexpected ReaderError."""
    from helpers import edgefarm

    path = tmp_path / "nul.yaml"
    path.write_bytes(LOCAL_INVENTORY.encode().replace(b"name: local", b"name: lo\x00cal", 1))
    err = inventory_error(path)
    assert (err.path, err.line, err.column) == (str(path), 2, 13), str(err)
    assert "U+0000" in str(err)
    run = edgefarm("inventory", "validate", "-i", str(path), tmp=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{path}:2:13:" in run.stderr and "unexpected error" not in run.stderr


def test_device_files_are_refused_quickly_by_name(tmp_path: Path) -> None:
    """``-i /dev/zero`` would be read until memory runs out; it is no regular file."""
    from helpers import edgefarm

    err = inventory_error(Path("/dev/zero"))
    assert err.path == "/dev/zero" and "not a regular file" in str(err)
    run = edgefarm("inventory", "validate", "-i", "/dev/zero", tmp=tmp_path, timeout=30)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "/dev/zero" in run.stderr and "not a regular file" in run.stderr


def test_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    """A file past MAX_FILE_BYTES is refused at once, however many entries it holds."""
    import time

    from helpers import edgefarm

    from orchestrator.config.yaml_loader import MAX_FILE_BYTES

    entry = "  - {name: d, transport: local, site: local, platform: linux-cpu}\n"
    body = "devices:\n" + entry * (MAX_FILE_BYTES // len(entry) + 1)
    path = tmp_path / "huge.yaml"
    path.write_text(body, encoding="utf-8")
    assert MAX_FILE_BYTES < path.stat().st_size < MAX_FILE_BYTES + len(entry) + 10
    started = time.monotonic()
    err = inventory_error(path)
    assert time.monotonic() - started < 1
    assert err.path == str(path) and "MiB" in str(err)
    run = edgefarm("inventory", "validate", "-i", str(path), tmp=tmp_path, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert str(path) in run.stderr and "MiB" in run.stderr


def test_file_of_countless_small_values_stops_at_the_node_limit(tmp_path: Path) -> None:
    """Under the byte cap, a file of tiny values is stopped while composing, at its line."""
    import time

    from orchestrator.config.yaml_loader import MAX_FILE_BYTES, MAX_NODES

    path = tmp_path / "many.yaml"
    path.write_text("devices:\n" + "- 1\n" * (MAX_NODES + 10), encoding="utf-8")
    assert path.stat().st_size <= MAX_FILE_BYTES
    started = time.monotonic()
    err = inventory_error(path)
    assert time.monotonic() - started < 30
    assert err.line is not None and err.line > MAX_NODES - 10
    assert f"more than {MAX_NODES} values" in str(err)
