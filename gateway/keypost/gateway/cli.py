"""`keypost gateway check-config|serve`: validate a configuration, run the gateway."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from cryptography import x509

from keypost.core import logfmt
from keypost.core.address import parse_address
from keypost.core.derived import carried_key
from keypost.core.x509_checks import ski_extension
from keypost.gateway.clients import describe_clients
from keypost.gateway.config import GatewayConfig, InboundGenuine, RecipientBinding, load_config
from keypost.gateway.demo import register_demo
from keypost.gateway.directory import anonymous_fetch
from keypost.gateway.errors import ConfigError, DirectoryUnavailable
from keypost.gateway.files import folder_problem
from keypost.gateway.kept import FOLDER as KEPT_FOLDER
from keypost.gateway.keys import DomainKeys
from keypost.gateway.pipeline import same_public_key
from keypost.gateway.quarantine import (
    Maildir,
    claimed,
    held_messages,
    loose_warning,
    released_already,
)
from keypost.gateway.release import release_held
from keypost.gateway.serve import Gateway, build, run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="the secure mail gateway (SMTP content filter)")
    gsub = p.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    check = gsub.add_parser("check-config", help="validate a configuration and print the plan")
    check.add_argument("--config", type=Path, required=True, metavar="FILE")
    check.add_argument("--connect", action="store_true",
                       help="also log in to the directory and fetch each signing container")
    check.set_defaults(func=_check)
    serve = gsub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, required=True, metavar="FILE")
    serve.set_defaults(func=_serve)
    register_demo(gsub)
    q = gsub.add_parser("quarantine", help="list or release held messages")
    q.add_argument("--config", type=Path, required=True, metavar="FILE")
    q.add_argument("action", choices=["list", "release"])
    q.add_argument("ids", nargs="*", metavar="ID", help="quarantine ids to release")
    # Usage errors found after parsing still get argparse's one line and exit status 2.
    q.set_defaults(func=_quarantine, usage_error=q.error)


# check-config's words for each policy.inbound_genuine (the directory is asked for keep and
# reencrypt only)
_INBOUND_GENUINE = {
    InboundGenuine.CLEAR: "delivered decrypted, as to everyone",
    InboundGenuine.KEEP: ("delivered as it arrived when every envelope names that certificate, "
                          "after the scan; certificates asked of the directory"),
    InboundGenuine.REENCRYPT: ("the scanned message encrypted anew to that certificate alone; "
                               "certificates asked of the directory"),
}


def describe(cfg: GatewayConfig) -> list[str]:
    """What the gateway would do, in words (no secrets)."""
    d, p = cfg.directory, cfg.policy
    lines = [
        f"listen on {cfg.listen}; relay to next hop {cfg.next_hop}",
        f"clients allowed to connect: {describe_clients(cfg.allowed_clients)}",
        f"messages over {cfg.max_message_size} bytes are refused (552/554)",
        f"at most {cfg.max_recipients} recipients per message (452 beyond), "
        f"{cfg.max_connections} sessions at once (421 beyond)",
        f"directory: {d.url or 'none (no signing, no re-encryption)'}"
        + (f" as {d.username}" if d.username else ""),
    ]
    for dom in cfg.domains:
        retired = len(dom.encryption_keys) - 1
        lines.append(
            f"domain {dom.name}: decrypt with current key {dom.encryption_keys[0].name}"
            + (f" and {retired} retired key(s)" if retired else "")
            + (f"; sign with {dom.signing_key.name}" if dom.signing_key else "; no signing key")
            + ("; derived keys: each recipient's mail opens with that recipient's key only"
               + (", mail to the plain keys for every recipient (accept_plain_keys)"
                  if dom.accept_plain_keys else "") if dom.derived_keys else "")
        )
    scan = (
        f"command {' '.join(cfg.scan.command)}" if cfg.scan.command
        else f"entry point {cfg.scan.entry_point}" if cfg.scan.entry_point else "none"
    )
    lines += [
        f"scan hook: {scan} ({'all mail' if cfg.scan.scan_plain else 'decrypted mail'})",
        f"outbound without genuine certificate: {p.outbound_no_genuine.value}",
        "sign outbound: "
        + ("always" if p.sign_all_outbound else
           f"when Subject has {p.sign_subject_tag!r} or {p.sign_header}: yes"),
        f"malformed or undecryptable mail: {p.malformed.value}; quarantine {cfg.quarantine_dir}",
        "decrypted inbound mail goes to: "
        + ("only the recipients its containers were issued for (recipient_binding = enforce, "
           "asked of the directory)" if p.recipient_binding is RecipientBinding.ENFORCE
           else "every envelope recipient of the domain (recipient_binding = off)"),
        "decrypted inbound mail, to a recipient with a genuine certificate: "
        + _INBOUND_GENUINE[p.inbound_genuine] + f" (inbound_genuine = {p.inbound_genuine.value})",
    ]
    if d.url:
        lines.append(f"signing containers kept across restarts in {cfg.state_dir / KEPT_FOLDER}")
    return lines


def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    gw = build(cfg, keep_state=False)  # loads keys and secrets: the same checks as serve
    for line in describe(gw.config):
        print(line)
    if not cfg.domains:
        print("warning: no [[domain]]: the gateway decrypts and signs nothing, it passes all "
              "mail through unchanged")
    for folder, mode in Maildir(cfg.quarantine_dir).loose_folders():
        print(f"warning: {loose_warning(folder, mode)}")
    state_problem = folder_problem(cfg.state_dir / KEPT_FOLDER) if cfg.directory.url else None
    if state_problem:
        print(f"warning: state_dir: {state_problem}: senders' previous signing containers "
              "will be forgotten at each restart")
    if args.connect:
        for line in probe(gw):
            print(line)
    print("configuration OK")
    return 0


def probe(gw: Gateway) -> list[str]:
    """Log in to the directory as the gateway; fetch and check each signing container.
    Raises DirectoryUnavailable (a one-line error) when the directory says no."""
    if gw.config.directory.url is None:
        return ["directory: none configured"]
    lines = []
    if gw.pipeline.bindings is not None:
        # a serial no container has (serials are positive): a 403 says the account is no
        # gateway account, which would defer every decrypted message
        gw.pipeline.bindings.bindings([1], [parse_address("probe@keypost.invalid")])
        lines.append("directory: recipient bindings answered (GET /v1/bindings)")
    for name, keys in gw.keys.items():
        lines += _compare_mode(gw, keys)
        sender = parse_address(f"postmaster@{name}")
        if keys.signing_key is None:
            gw.directory.encryption_certificates(parse_address("probe@keypost.invalid"))
            lines.append(f"directory: login and search OK ({name} has no signing key)")
            continue
        found = gw.directory.signing_containers(sender)
        if not found:
            raise DirectoryUnavailable(f"the directory gives no signing container for {sender}")
        cert = found[0]
        if not same_public_key(cert, keys.signing_key):
            raise DirectoryUnavailable(f"the directory's signing key for {name} is not ours")
        lines.append(f"directory: signing container for {sender} valid until "
                     f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, matches the signing key")
    return lines


def _compare_mode(gw: Gateway, keys: DomainKeys) -> list[str]:
    """Does the directory issue this domain's containers in the mode derived_keys says?
    Compared on the container an outside sender gets for postmaster@domain, of our current
    key (by SKI). Raises DirectoryUnavailable on a mismatch, which would leave every
    message to the domain unopened."""
    probe_address = parse_address(f"postmaster@{keys.name}")
    current = keys.keys[0].public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(current).digest
    ours = [cert for cert in anonymous_fetch(gw.config.directory, probe_address,
                                             gw.config.timeouts.directory)
            if ski_extension(cert) == ski]
    modes = {carried_key(c.public_key(), current, probe_address) for c in ours}
    if not ours or modes == {None}:
        return [f"directory: no container of {keys.name}'s current key for {probe_address} "
                "to compare derived_keys with"]
    wanted = "derived" if keys.derived else "plain"
    if wanted not in modes:
        found = "derived keys" if "derived" in modes else "the key itself"
        raise DirectoryUnavailable(
            f"the directory's containers for {keys.name} carry {found}, but derived_keys is "
            f"{'on' if keys.derived else 'off'}: mail to them would not open "
            "(match `domain add/rekey --derived-keys` and [[domain]] derived_keys)")
    return [f"directory: {keys.name}'s containers carry "
            f"{'derived keys' if keys.derived else 'the key itself'}, as derived_keys says"]


def _serve(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    logfmt.configure(cfg.log_level)
    gw = build(cfg)
    asyncio.run(run(gw))
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    if args.action == "release" and not args.ids:
        args.usage_error("release needs the IDs of the messages to send on, as list shows them")
    if args.action == "list" and args.ids:
        args.usage_error("list takes no IDs")
    cfg = load_config(args.config)
    root = cfg.quarantine_dir
    held = {h.qid: h for h in held_messages(root)}
    if args.action == "list":
        for h in held.values():
            print(f"{h.qid}  from <{h.mail_from}> to {', '.join(h.rcpts)}: {h.reason}")
        print(f"{len(held)} message(s) held in {root}")
        return 0
    missing = [qid for qid in args.ids if qid not in held]
    if missing:
        if released_already(root, missing[0]):
            raise ConfigError(f"{missing[0]} was released already (kept in {root / 'cur'})")
        raise ConfigError(f"no held message {missing[0]} in {root}")
    gw = build(cfg)  # keys and directory: outbound mail gets the steps the hold interrupted
    for qid in args.ids:
        with claimed(root, qid) as found:
            release_held(gw.pipeline, gw.handler.relay, gw.handler.quarantine, found)
        print(f"released {qid} to {', '.join(found.rcpts)} via {cfg.next_hop}")
    return 0
