"""`keypost install|uninstall thunderbird`: native manifest, launcher, .xpi, user.js prefs.

Every install rewrites everything from the current environment (interpreter path, add-on
sources), so re-running it after an upgrade or after moving the environment repairs it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keypost.installer import hostconfig
from keypost.installer.journal import Journal
from keypost.installer.manifest_locations import ADDON_ID, HOST_NAME, Environment, Scope
from keypost.installer.native_manifest import (
    dumps,
    host_manifest,
    launcher_bytes,
    launcher_name,
    managed_storage_manifest,
)
from keypost.installer.profiles import find_profiles, pref_value, write_user_prefs
from keypost.installer.registry import RegistryWriter
from keypost.installer.xpi import build_xpi, find_extension_dir

Log = Callable[[str], None]


@dataclass(frozen=True)
class InstallOptions:
    scope: Scope = "user"
    python: str | None = None  # interpreter the launcher runs; default: this one
    extension_dir: Path | None = None
    send_in_background: bool = False
    auto_enable: bool = (
        False  # extensions.autoDisableScopes=0 so the side-loaded add-on starts enabled
    )
    managed: dict[str, str] = field(default_factory=dict)  # storage.managed presets
    profiles: tuple[Path, ...] | None = None  # None: every profile found


@dataclass(frozen=True)
class InstallResult:
    launcher: Path
    manifests: tuple[Path, ...]
    registry_keys: tuple[tuple[str, str], ...]
    xpi: Path
    profiles: tuple[Path, ...]
    managed: tuple[Path, ...]


def _manifest_targets(env: Environment, scope: Scope) -> list[Path]:
    """The manifest file(s) to write: the first directory, plus further ones that exist."""
    dirs = env.native_host_dirs(scope)
    return [d / f"{HOST_NAME}.json" for i, d in enumerate(dirs) if i == 0 or d.is_dir()]


def _profile_targets(env: Environment, opts: InstallOptions) -> list[Path]:
    if opts.scope == "system":
        return []
    if opts.profiles is not None:
        return list(opts.profiles)
    return [p.path for p in find_profiles(env)]


def install(
    env: Environment,
    opts: InstallOptions,
    registry: RegistryWriter | None = None,
    log: Log = print,
    journal: Journal | None = None,
) -> InstallResult:
    """Write everything; all or nothing. With a `journal`, the caller decides (it may have
    more steps to run): its rollback undoes what this wrote. Without one, a failure here
    undoes this run's writes before the exception leaves."""
    if journal is not None:
        return _install(env, opts, registry, log, journal)
    with Journal() as own:
        return _install(env, opts, registry, log, own)


def _install(
    env: Environment,
    opts: InstallOptions,
    registry: RegistryWriter | None,
    log: Log,
    journal: Journal,
) -> InstallResult:
    if env.os == "win32" and registry is None:
        raise ValueError("a registry writer is needed on Windows")
    # Built and checked before the first write: a broken add-on source writes nothing.
    info, xpi_bytes = build_xpi(opts.extension_dir or find_extension_dir())
    data = env.data_dir(opts.scope)
    launcher = data / launcher_name(env.os)
    journal.write(launcher, launcher_bytes(env.os, opts.python), 0o755)
    log(f"launcher: {launcher}")

    manifest_text = dumps(host_manifest(launcher)).encode("utf-8")
    manifests = _manifest_targets(env, opts.scope)
    for m in manifests:
        journal.write(m, manifest_text, 0o644)
        log(f"native messaging manifest: {m}")
    keys: list[tuple[str, str]] = []
    if env.os == "win32" and registry is not None:
        hive, key = env.registry_key("native", opts.scope, HOST_NAME)
        journal.set_registry(registry, hive, key, str(manifests[0]))
        keys.append((hive, key))
        log(f"registry: {hive}\\{key} -> {manifests[0]}")

    xpi = data / f"{info.addon_id}.xpi"
    journal.write(xpi, xpi_bytes)
    log(f"add-on {info.addon_id} {info.version}: {xpi}")

    prefs: dict[str, bool | int | str] = {}
    if opts.send_in_background:
        prefs["mailnews.sendInBackground"] = True
    if opts.auto_enable:
        prefs["extensions.autoDisableScopes"] = 0
    installed: list[Path] = []
    for profile in _profile_targets(env, opts):
        journal.write(profile / "extensions" / f"{info.addon_id}.xpi", xpi_bytes)
        journal.saving(profile / "user.js")
        write_user_prefs(profile, prefs)
        installed.append(profile)
        log(f"installed into profile {profile}")
    if not installed:
        log(f"no Thunderbird profile found: install {xpi} from Thunderbird's Add-ons Manager")
        if prefs:  # they live in a profile's user.js: say so rather than drop them
            asked = ", ".join(f"{name} = {pref_value(value)}" for name, value in prefs.items())
            log(f"not set, as there is no profile: {asked} (set it in Thunderbird's Config"
                " Editor, or run the install again once Thunderbird has made a profile)")
    elif not opts.send_in_background:
        log(
            "tip: --send-in-background lets Thunderbird send encrypted mail at once"
            ' (else use "Send Unsent Messages")'
        )

    managed: list[Path] = []
    if opts.managed:
        managed = _write_managed(env, opts.scope, opts.managed, registry, log, journal)
    return InstallResult(
        launcher, tuple(manifests), tuple(keys), xpi, tuple(installed), tuple(managed)
    )


def _write_managed(
    env: Environment,
    scope: Scope,
    data: dict[str, str],
    registry: RegistryWriter | None,
    log: Log,
    journal: Journal,
) -> list[Path]:
    path = env.managed_storage_dirs(scope)[0] / f"{ADDON_ID}.json"
    journal.write(path, dumps(managed_storage_manifest(data)).encode("utf-8"), 0o644)
    log(f"managed storage: {path}")
    if env.os == "win32" and registry is not None:
        hive, key = env.registry_key("managed", scope, ADDON_ID)
        journal.set_registry(registry, hive, key, str(path))
    return [path]


def _unlink(path: Path, log: Log) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
        log(f"removed {path}")


def uninstall(
    env: Environment,
    scope: Scope = "user",
    registry: RegistryWriter | None = None,
    profiles: tuple[Path, ...] | None = None,
    log: Log = print,
) -> None:
    """Remove what `install` wrote in this scope (files that are not there are skipped)."""
    for d in env.native_host_dirs(scope):
        _unlink(d / f"{HOST_NAME}.json", log)
    for d in env.managed_storage_dirs(scope):
        _unlink(d / f"{ADDON_ID}.json", log)
    if env.os == "win32" and registry is not None:
        for kind, name in (("native", HOST_NAME), ("managed", ADDON_ID)):
            hive, key = env.registry_key(kind, scope, name)  # type: ignore[arg-type]
            if registry.get_default(hive, key) is not None:
                registry.delete(hive, key)
                log(f"removed registry key {hive}\\{key}")
    data = env.data_dir(scope)
    _unlink(data / launcher_name(env.os), log)
    _unlink(data / f"{ADDON_ID}.xpi", log)
    if data.is_dir() and not any(data.iterdir()):
        data.rmdir()
    if scope == "user":
        targets = list(profiles) if profiles is not None else [p.path for p in find_profiles(env)]
        for profile in targets:
            _unlink(profile / "extensions" / f"{ADDON_ID}.xpi", log)
            if (profile / "user.js").exists():
                write_user_prefs(profile, {})


def configure_host(
    directory: str,
    username: str | None,
    trust_anchor_pem: str | None,
    password: str | None = None,
    fingerprint: str | None = None,
    test: bool = True,
    python: str | None = None,
    log: Log = print,
) -> dict[str, object]:
    """Hand directory, account and trust anchor to the host's `configure` (see PROTOCOL.md)."""
    status = hostconfig.configure(
        directory,
        username=username,
        password=password,
        trust_anchor_pem=trust_anchor_pem,
        trust_anchor_fingerprint=fingerprint,
        test=test,
        command=hostconfig.host_command(python),
    )
    anchor = status.get("trust_anchor") or {}
    fp = anchor.get("fingerprint") if isinstance(anchor, dict) else None
    user = status.get("username") or "(anonymous)"
    log(f"host configured: directory {status.get('directory')}, user {user}")
    if fp:
        log(f"trust anchor fingerprint (SHA-256): {fp}")
    return status


def _own_folder(path: Path) -> bool:
    """A folder named as the host names its own (host/paths.py): `.../keypost`, or on
    Windows the cache's `...\\keypost\\Cache`."""
    return path.name == "keypost" or (path.name == "Cache" and path.parent.name == "keypost")


def purge_host_config(python: str | None = None, log: Log = print) -> None:
    """Remove the host's configuration folder and keyring entry (`uninstall --purge`)."""
    try:
        status = hostconfig.status(command=hostconfig.host_command(python))
    except hostconfig.HostError as exc:
        log(f"host configuration left in place: {exc}")
        return
    username = status.get("username")
    if username:
        import keyring
        import keyring.errors

        try:
            keyring.delete_password("keypost", str(username))
            log(f"removed the keyring entry of {username}")
        except keyring.errors.KeyringError:
            pass
    for key in ("config_dir", "cache_dir"):
        folder = status.get(key)
        if not isinstance(folder, str) or not Path(folder).is_dir():
            continue
        # The host names its folders; KEYPOST_CONFIG_DIR / KEYPOST_CACHE_DIR may point them
        # anywhere (HOME itself): only a folder of keypost's own goes as a whole.
        if not _own_folder(Path(folder)):
            log(f"left {folder} in place: not a folder of keypost's own (set by "
                "KEYPOST_CONFIG_DIR or KEYPOST_CACHE_DIR?); remove keypost's files by hand")
            continue
        shutil.rmtree(folder)
        log(f"removed {folder}")
