"""Device inventory (``devices.toml``): which devices exist, how to reach them, what they run.

Example::

    known_hosts = "known_hosts"        # host keys of the devices (default ~/.ssh/known_hosts);
                                       # an unknown host is refused: 'edgeseg devices trust NAME'

    [defaults]                         # applies to every [[device]] unless it sets the key
    user = "root"
    key = "~/.ssh/id_ed25519"          # SSH private key
    root = "/opt/edgeseg"              # install root on the device
    python = "python3"                 # the device's Python (needs numpy, Pillow, cryptography)
    timeout = 15.0                     # seconds without an answer before a link counts as dead (at most 3600)
    trusted_keys = ["keys/edgeseg-signing.pem"]   # signing keys the device accepts (provision)
    mender_modules = "/usr/share/mender/modules/v3"  # where 'provision --mender' writes the update module

    [[device]]
    name = "cam-01"
    host = "192.168.1.20"
    port = 22
    target = "cpu"                     # target profile the device runs (archives must match)
    groups = ["lab", "canary"]

Relative paths are relative to the inventory file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from .._schema import Strict, load_toml, validate
from ..errors import ConfigError

__all__ = ["Device", "Inventory", "load_inventory", "DEFAULT_INVENTORY"]

DEFAULT_INVENTORY = Path("devices.toml")
#: longest ``timeout`` / ``connect_timeout`` (seconds): TCP_USER_TIMEOUT and the SSH timers take bounded values
MAX_TIMEOUT = 3600.0
_DEVICE_KEYS = ("user", "port", "key", "root", "python", "timeout", "connect_timeout", "trusted_keys", "target", "groups",
                "mender_modules")


class Device(Strict):
    """One device reachable over SSH."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key: str | None = Field(default=None, description="SSH private key file; None = ~/.ssh/id_ed25519")
    target: str = Field(description="target profile name the device runs")
    root: str = "/opt/edgeseg"
    python: str = "python3"
    groups: list[str] = Field(default_factory=list)
    timeout: float = Field(default=15.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False,
                           description="seconds without an answer before the link counts as dead")
    connect_timeout: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    trusted_keys: list[str] = Field(default_factory=list, description="PEM public keys the device accepts")
    mender_modules: str = Field(default="/usr/share/mender/modules/v3", pattern=r"^/",
                                description="the device's Mender update-module folder (provision --mender)")

    @property
    def address(self) -> str:
        """``user@host:port``."""
        return f"{self.user}@{self.host}:{self.port}"


class Inventory(Strict):
    """A parsed ``devices.toml``."""

    known_hosts: str = "~/.ssh/known_hosts"
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        names = [d.name for d in self.devices]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"device names must be unique: {', '.join(sorted(dup))}")
        return self

    def get(self, name: str) -> Device:
        """The device called ``name``.

        Raises:
            ConfigError: no such device (lists the known ones).
        """
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"no device {name!r} in the inventory; known: {', '.join(d.name for d in self.devices) or 'none'}")

    def select(self, names: list[str] | None = None, group: str | None = None) -> list[Device]:
        """Devices by name (in the given order) or by group (in inventory order).

        Raises:
            ConfigError: unknown device, empty group, or neither/both given.
        """
        if bool(names) == bool(group):
            raise ConfigError("name devices with --device NAME (repeatable) or a group with --group G")
        if names:
            return [self.get(n) for n in names]
        found = [d for d in self.devices if group in d.groups]
        if not found:
            groups = sorted({g for d in self.devices for g in d.groups})
            raise ConfigError(f"no device in group {group!r}; groups: {', '.join(groups) or 'none'}")
        return found


def _resolve(base: Path, value: str, where: str, source: Path) -> str:
    """``value`` as an absolute path (``~`` expanded, relative to the inventory's folder); ConfigError naming ``where``."""
    try:
        if "\0" in value:
            raise ValueError("it contains a NUL character")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())
    except (ValueError, RuntimeError, OSError) as exc:  # NUL, ~user without a home, a resolve loop
        raise ConfigError(f"{source}: {where}: {value!r} is not a usable path ({exc})") from None


def load_inventory(path: str | Path = DEFAULT_INVENTORY) -> Inventory:
    """Read and validate ``devices.toml``.

    Raises:
        ConfigError: missing file, invalid TOML, unknown key, bad value, duplicate names.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"device inventory {path} does not exist; write one (format: the documentation's 'Deploy' page, or 'edgeseg devices --help') or pass --inventory")
    data = load_toml(path, "device inventory")
    base = path.parent.resolve()
    defaults = data.pop("defaults", {})
    _check_table(defaults, "defaults", path, "[defaults]")
    unknown = set(defaults) - set(_DEVICE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: defaults.{sorted(unknown)[0]}: unknown key")
    _check_paths(defaults, "defaults", path)
    raw_devices = data.pop("device", [])
    if not isinstance(raw_devices, list):
        raise ConfigError(f"{path}: device: must be an array of tables (one [[device]] section per device), "
                          f"not {_kind(raw_devices)}{' ([device] is one table: write [[device]])' if isinstance(raw_devices, dict) else ''}")
    devices = []
    for i, raw in enumerate(raw_devices):
        _check_table(raw, f"device[{i}]", path, "a [[device]] section")
        _check_paths(raw, f"device[{i}]", path)
        merged = {**defaults, **raw}
        if merged.get("key"):
            merged["key"] = _resolve(base, merged["key"], f"{f'device[{i}]' if 'key' in raw else 'defaults'}.key", path)
        src = f"device[{i}]" if "trusted_keys" in raw else "defaults"
        merged["trusted_keys"] = [_resolve(base, k, f"{src}.trusted_keys[{j}]", path)
                                  for j, k in enumerate(merged.get("trusted_keys", []))]
        devices.append(merged)
    if "known_hosts" in data:
        if not isinstance(data["known_hosts"], str):
            raise ConfigError(f"{path}: known_hosts: must be a string (a file path), not {_kind(data['known_hosts'])}")
        data["known_hosts"] = _resolve(base, data["known_hosts"], "known_hosts", path)
    return validate(Inventory, {**data, "devices": devices}, str(path))


def _kind(value: object) -> str:
    """A TOML value's type in words (for one-line errors)."""
    for cls, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                      (list, "an array"), (dict, "a table")):
        if isinstance(value, cls):
            return name
    return "a date/time"


def _check_table(value: object, where: str, path: Path, written: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}: must be a table ({written}), not {_kind(value)}")


def _check_paths(table: dict[str, Any], where: str, path: Path) -> None:
    """The path-valued keys the merge resolves (``key``, ``trusted_keys``) have their TOML shapes."""
    if "key" in table and not isinstance(table["key"], str):
        raise ConfigError(f"{path}: {where}.key: must be a string (an SSH private key file), not {_kind(table['key'])}")
    if "trusted_keys" in table:
        keys = table["trusted_keys"]
        if not isinstance(keys, list):
            hint = f' (one key: trusted_keys = ["{keys}"])' if isinstance(keys, str) else ""
            raise ConfigError(f"{path}: {where}.trusted_keys: must be an array of strings (PEM public key files), "
                              f"not {_kind(keys)}{hint}")
        for j, item in enumerate(keys):
            if not isinstance(item, str):
                raise ConfigError(f"{path}: {where}.trusted_keys[{j}]: must be a string (a PEM public key file), "
                                  f"not {_kind(item)}")
