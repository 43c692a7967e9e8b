"""The mss-relay command: serve, check-config, hash-password, dkim-keygen, conversations,
reload, unlock, why, bals, report, directory, whitelist, audit, state."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mss_relay import __version__
from mss_relay.config import ConfigError, DkimAlgorithm, load_config
from mss_relay.passwords import hash_password
from mss_relay.state.errors import STATE_ERRORS, STATE_OR_OS

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus can name it
CONFIG_ENV = "MSS_RELAY_CONFIG"
DEFAULT_CONFIG = "/etc/mss-relay/mss-relay.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mss-relay",
        description="SMTP relay enforcing the rules of the Messagerie Sécurisée de Santé.",
    )
    parser.add_argument("--version", action="version", version=f"mss-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the relay")
    serve.add_argument("--config", required=True, help="path to the YAML configuration")
    # Internal: the number of a worker process started by the first (workers: N).
    serve.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    check = commands.add_parser("check-config", help="validate a configuration and exit")
    check.add_argument("--config", required=True, help="path to the YAML configuration")
    commands.add_parser("hash-password", help="read a password on standard input, print its hash")
    keygen = commands.add_parser(
        "dkim-keygen", help="write a new DKIM private key, print the DNS TXT record to publish"
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("selector", metavar="SELECTOR")
    keygen.add_argument(
        "--algorithm", choices=tuple(DkimAlgorithm), default=DkimAlgorithm.RSA_SHA256
    )
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument(
        "--output",
        help="where to write the key (default: ./DOMAIN.SELECTOR.key; never overwritten)",
    )
    conversations = commands.add_parser(
        "conversations", help="look at and close patient conversations"
    )
    _config_option(conversations)
    actions = conversations.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list conversations")
    _config_option(listing)
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--open", dest="state", action="store_const", const="open")
    which.add_argument("--closed", dest="state", action="store_const", const="closed")
    listing.add_argument("--bal", help="only this BAL's conversations")
    show = actions.add_parser("show", help="one patient's conversations and messages")
    _config_option(show)
    show.add_argument("patient", metavar="PATIENT_ADDRESS")
    close = actions.add_parser("close", help="close a conversation (logged as administrative)")
    _config_option(close)
    close.add_argument("bal", metavar="BAL")
    close.add_argument("patient", metavar="PATIENT_ADDRESS")
    _control_commands(commands)
    _why_parser(commands)
    _bals_parser(commands)
    _report_parser(commands)
    _directory_parser(commands)
    _whitelist_parser(commands)
    audit = _audit_parser(commands)
    _audit_pseudonym_parser(audit)
    _audit_verify_parser(audit)
    _state_parser(commands)
    return parser


def _state_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = commands.add_parser("state", help="the state database: copy it into PostgreSQL")
    _config_option(state)
    actions = state.add_subparsers(dest="action", required=True)
    copy = actions.add_parser(
        "copy", help="copy a SQLite state into a PostgreSQL one (again: copies what is missing)"
    )
    _config_option(copy)
    copy.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite file"
    )
    copy.add_argument(
        "--to", dest="target", required=True, metavar="postgresql://USER@HOST:PORT/DB"
    )


def _state(args: argparse.Namespace) -> int:
    """state copy: one line per kind of row on standard output; a refusal in
    one line on standard error (1), a wrong --from or --to (2)."""
    import logging

    from mss_relay.pseudonym import key_file, load_key
    from mss_relay.state import copy

    try:
        source, target = copy.source_path(args.source), copy.target_url(args.target)
    except ValueError as error:
        print(f"mss-relay: state copy: {error}", file=sys.stderr)
        return 2
    # The pool's own warnings (a server refusing connections) would add
    # lines, and tracebacks, to the one that says why.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    logging.getLogger("psycopg").propagate = False
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        config = load_config(path)
        keys = key_file(config)
        pseudonyms = load_key(keys, create=False)
    except ConfigError as error:
        print(f"mss-relay: state copy: configuration error: {error}", file=sys.stderr)
        return 1
    settings = copy.settings_for(target, config.postgres)
    try:
        counts = asyncio.run(copy.copy_state(source, settings, pseudonyms, keys))
    except copy.CopyRefused as error:
        print(f"mss-relay: state copy: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mss-relay: state copy: interrupted, nothing copied", file=sys.stderr)
        return 1
    for kind in copy.KINDS:
        print(f"{kind}: {counts[kind]}")
    return 0


def _audit_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    audit = commands.add_parser(
        "audit", help="the audit trail: a patient's pseudonym, the chain of the log files"
    )
    _config_option(audit)
    return audit.add_subparsers(dest="action", required=True)


def _audit_pseudonym_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pseudonym = actions.add_parser(
        "pseudonym", help="a patient's pseudonym, as the log and the state show it"
    )
    _config_option(pseudonym)
    pseudonym.add_argument("patient", metavar="ADDRESS_OR_INS")


def _audit_pseudonym(args: argparse.Namespace) -> int:
    """The pseudonym under the relay's key (read, never made, and checked
    against the state database's): grep the log for it."""
    from mss_relay.core.addresses import is_patient_address, normalize_address, split_address
    from mss_relay.pseudonym import for_config

    # As the relay takes an address (normalize_address; of() unquotes the
    # local part as aiosmtpd does): the pseudonym it logged for it.
    patient = normalize_address(args.patient)
    if not split_address(patient)[0]:
        print("mss-relay: audit pseudonym: give a patient's address or INS", file=sys.stderr)
        return 2
    if "@" in patient and not is_patient_address(patient):
        print(f"mss-relay: audit pseudonym: {args.patient} is no patient address", file=sys.stderr)
        return 2
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        pseudonyms = for_config(load_config(path), create=False)
    except ConfigError as error:
        return _config_error(error)
    print(pseudonyms.of(patient))
    return 0


def _audit_verify_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = actions.add_parser(
        "verify", help="check the chain of log files given in rotation order (oldest first)"
    )
    verify.add_argument("files", metavar="FILE", nargs="+", help="log files, .gz or not")


def _audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mss_relay.audit.verification import verify

    verdict = verify(Path(name) for name in args.files)
    # The verdict on standard output, a failure's reason on standard error;
    # what it saw on standard error too, so that an intact log's standard
    # output is the one line « N lignes, chaîne intacte » (scripts test it).
    for line in verdict.starts:
        print(line)
    if (streams := verdict.streams_line()) is not None:
        print(streams, file=sys.stderr)  # a stream that should not be there shows
    for warning in verdict.warnings():
        print(warning, file=sys.stderr)
    print(verdict.message, file=sys.stdout if verdict.code == 0 else sys.stderr)
    return verdict.code


def _control_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reload = commands.add_parser(
        "reload", help="make the running relay read its configuration again (as SIGHUP)"
    )
    _config_option(reload)
    unlock = commands.add_parser(
        "unlock", help="lift the AUTH lockout of a user name or a client address"
    )
    _config_option(unlock)
    unlock.add_argument("key", metavar="USER|ADDRESS")


def _why_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mss_relay.why import LANGUAGES

    why = commands.add_parser(
        "why", help="the decisions and the outcome of a transaction, from the log"
    )
    why.add_argument(
        "ref", metavar="TXID|MESSAGE-ID", help="the id a reply quotes, or a Message-ID"
    )
    _config_option(why)
    why.add_argument("--log", help="read this log file instead of log.file ('-': standard input)")
    why.add_argument("--lang", choices=LANGUAGES, default="fr", help="language (default fr)")


def _why(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mss_relay.why import why

    log: Path | None
    if args.log is not None:
        log = None if args.log == "-" else Path(args.log)
    else:
        path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        try:
            config = load_config(path)
        except ConfigError as error:
            return _config_error(error)
        if config.log.file is None:
            print(
                "mss-relay: why: log.file is '-' (journald): give the log on standard input,"
                " e.g. journalctl -u mss-relay -o cat | mss-relay why ID --log -",
                file=sys.stderr,
            )
            return 1
        log = config.log.file
    return why(args.ref, log, args.lang)


def _bals_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bals = commands.add_parser(
        "bals", help="list the BALs, their last activity and their lifecycle flags"
    )
    _config_option(bals)
    bals.add_argument(
        "--inactive",
        type=int,
        metavar="DAYS",
        help="only the BALs inactive for at least DAYS days",
    )
    bals.add_argument("--json", action="store_true", help="machine-readable output")


def _report_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser(
        "report", help="figures of the log for a period, as text or one HTML page"
    )
    _config_option(report)
    report.add_argument(
        "--since", default="30d", help="30d, 12h, 2w, or an ISO date (default: 30d)"
    )
    report.add_argument("--html", metavar="FILE", help="write the page there instead of text")
    report.add_argument("--log", metavar="FILE", help="read this log instead of log.file")


def _directory_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    directory = commands.add_parser(
        "directory", help="the Annuaire Santé: import an extraction, search it, show a BAL"
    )
    _config_option(directory)
    actions = directory.add_subparsers(dest="action", required=True)
    load = actions.add_parser("import", help="load an Extraction_Correspondance_MSSante")
    _config_option(load)
    load.add_argument("file", metavar="FILE.zip|FILE.txt")
    load.add_argument(
        "--force",
        action="store_true",
        help="import even if it removes more than 20%% of the current import's addresses",
    )
    find = actions.add_parser("search", help="BALs by name, first name, structure, address")
    _config_option(find)
    find.add_argument("text", metavar="TEXT", nargs="+")
    show = actions.add_parser("show", help="the BALs at one address")
    _config_option(show)
    show.add_argument("address", metavar="ADDRESS")


def _whitelist_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    whitelist = commands.add_parser("whitelist", help="the ANS liste blanche: update, check")
    actions = whitelist.add_subparsers(dest="action", required=True)
    update = actions.add_parser(
        "update", help="fetch, validate and install the list (trust_space.whitelist)"
    )
    _config_option(update)
    update.add_argument(
        "--from",
        dest="source",
        metavar="FILE_OR_URL",
        help="a file or an https:// URL (default: trust_space.whitelist_url)",
    )
    update.add_argument(
        "--force", action="store_true", help="install even a list removing over 20 %% of domains"
    )
    check = actions.add_parser("check", help="whether a domain is listed, and by which operators")
    _config_option(check)
    check.add_argument("domain")


def _whitelist(args: argparse.Namespace) -> int:

    from mss_relay.trust import source
    from mss_relay.trust.whitelist import InvalidWhitelist

    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        settings = load_config(path).trust_space
    except ConfigError as error:
        return _config_error(error)
    if settings.whitelist is None:
        print("mss-relay: whitelist: trust_space.whitelist is not set", file=sys.stderr)
        return EX_CONFIG
    file: Path = settings.whitelist
    if args.action == "check":
        try:
            listed = source.load(file)
        except (OSError, InvalidWhitelist) as error:
            print(f"mss-relay: whitelist: {file}: {error}", file=sys.stderr)
            return 1
        operators = listed.operators_of(args.domain)
        if not operators:
            print(f"{args.domain}: not listed ({listed.generated})")
            return 1
        print(f"{args.domain}: listed, {len(operators)} operator certificate(s):")
        for dn in operators:
            print("  " + " ".join(dn.split()))  # a DN written over two lines, on one
        return 0
    origin = args.source or settings.whitelist_url
    if origin is None:
        print(
            "mss-relay: whitelist update: no --from and no trust_space.whitelist_url",
            file=sys.stderr,
        )
        return 2
    try:
        done = source.update(file, origin, settings.whitelist_ca, force=args.force)
    except (source.UpdateRefused, OSError) as error:
        print(f"mss-relay: whitelist update refused: {error}", file=sys.stderr)
        return 1
    print(done.whitelist.summary())
    if done.whitelist.bad_names:
        print(
            f"attention : {done.whitelist.bad_names} entrée(s) dont le Nom n'est pas un nom"
            " de domaine, laissée(s) de côté"
        )
    if done.whitelist.truncated_end:
        print(
            "attention : balise de fin </ListeBlancheMSSante> absente après le dernier"
            " Domaine complet (liste acceptée)"
        )
    return 0


def _config_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before or after the action, neither default overwrites the other.
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help=f"path to the YAML configuration (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})",
    )


def _config_error(error: ConfigError) -> int:
    print(f"mss-relay: configuration error: {error}", file=sys.stderr)
    return EX_CONFIG


def _check_config(path: str) -> int:
    from mss_relay import pseudonym
    from mss_relay.runtime import make_signer, make_upstream, make_verifier, open_whitelist
    from mss_relay.tls import inbound_context, server_context
    from mss_relay.trust.watcher import list_warnings, stale_days

    try:
        config = load_config(path)
        if config.tls and not (config.tls.self_signed and not config.tls.certificate.exists()):
            server_context(config.tls, config.hostname)
            inbound_context(config.tls, config.hostname)
        if config.upstream:
            make_upstream(config, config.upstream)
        make_signer(config, create=False)
        pseudonym.check_config(config)  # refused as serve refuses it, never made
        make_verifier(config)
        if config.inbound_delivery:
            make_upstream(config, config.inbound_delivery)
        # The list is opened and parsed as serve does: what serve refuses, refused here.
        listed = open_whitelist(config)
    except ConfigError as error:
        return _config_error(error)
    warnings = list(config.warnings)
    if listed is not None:  # what worker 0 says at start
        bals = (bal.address for bal in config.bals)
        warnings += [message for message, _ in list_warnings(bals, listed.current)]
        age = stale_days(listed.current, config.trust_space.max_age)
        if age is not None:
            warnings.append(
                f"trust_space.whitelist: the list was generated {age:.1f} days ago"
                f" ({listed.current.generated}), more than trust_space.max_age"
            )
    for warning in warnings:
        print(f"mss-relay: warning: {warning}", file=sys.stderr)
    print(config.summary())
    return 0


def _serve(path: str, worker: int = 0) -> int:
    from mss_relay.app import serve
    from mss_relay.errors import AlreadyRunning, ListenError

    try:
        config = load_config(path)
        return asyncio.run(serve(config, worker))
    except ConfigError as error:
        return _config_error(error)
    except (ListenError, AlreadyRunning) as error:
        print(f"mss-relay: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mss-relay: hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _dkim_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mss_relay.core.addresses import normalize_domain
    from mss_relay.signing import MIN_RSA_BITS, dns_record, generate_key, write_key

    domain = normalize_domain(args.domain)
    if "." not in domain or not args.selector.replace("-", "").replace("_", "").isalnum():
        print("mss-relay: dkim-keygen: give a domain name and a selector", file=sys.stderr)
        return 2
    if args.algorithm == DkimAlgorithm.RSA_SHA256 and not MIN_RSA_BITS <= args.bits <= 8192:
        print(f"mss-relay: dkim-keygen: --bits must be {MIN_RSA_BITS} to 8192", file=sys.stderr)
        return 2
    path = Path(args.output or f"{domain}.{args.selector}.key")
    pem, public = generate_key(args.algorithm, args.bits)
    try:
        write_key(path, pem)
    except FileExistsError:
        print(f"mss-relay: dkim-keygen: {path} exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"mss-relay: dkim-keygen: cannot write {path}: {error.strerror}", file=sys.stderr)
        return 1
    print(dns_record(domain, args.selector, args.algorithm, public))
    print(
        f"mss-relay: key written to {path} (mode 600). Publish the record above, then add to"
        f" the configuration:\n  dkim:\n    - domain: {domain}\n      selector: {args.selector}"
        f"\n      private_key: {path.resolve()}\n      algorithm: {args.algorithm}",
        file=sys.stderr,
    )
    return 0


def _conversations(args: argparse.Namespace) -> int:
    from mss_relay import admin

    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        config = load_config(path)
        if args.action == "list":
            return asyncio.run(admin.list_conversations(config, args.state, args.bal))
        if args.action == "show":
            return asyncio.run(admin.show_conversation(config, args.patient))
        return asyncio.run(admin.close_conversation(config, args.bal, args.patient))
    except ConfigError as error:
        return _config_error(error)
    except STATE_ERRORS as error:
        print(f"mss-relay: state database: {error}".splitlines()[0], file=sys.stderr)
        return 1


def _control(args: argparse.Namespace) -> int:
    """Ask the running relay, through its control socket: 0 when done."""
    from mss_relay import control

    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    line = "reload" if args.command == "reload" else f"unlock {args.key}"
    try:
        reply = control.ask(control.socket_path(path), line)
    except ConfigError as error:
        return _config_error(error)
    except control.NotRunning as error:
        print(f"mss-relay: {args.command}: {error}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"mss-relay: {args.command} failed: {reply.get('error')}", file=sys.stderr)
        return 1
    processes = reply.get("processes", 1)
    if args.command == "reload":
        changed = ", ".join(reply.get("changed", ())) or "nothing"
        print(f"mss-relay: reloaded ({processes} process(es)); changed: {changed}")
        restart = reply.get("restart_required")
        if restart:
            print(f"mss-relay: not applied until a restart: {', '.join(restart)}")
        return 0
    lifted = reply.get("lifted")
    what = f"lockout lifted ({', '.join(lifted)})" if lifted else "was not locked out"
    print(f"mss-relay: {args.key}: {what} ({processes} process(es))")
    return 0


def _bals(args: argparse.Namespace) -> int:
    from mss_relay import roster

    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        return asyncio.run(roster.list_bals(load_config(path), args.inactive, args.json))
    except ConfigError as error:
        return _config_error(error)
    except STATE_OR_OS as error:
        print(f"mss-relay: state database: {error}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace) -> int:
    import dataclasses
    from datetime import datetime
    from pathlib import Path

    from mss_relay.logfiles import log_files
    from mss_relay.report import LogLines, aggregate, parse_since
    from mss_relay.report_html import render_html
    from mss_relay.report_text import render_text

    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as error:
        return _config_error(error)
    log = Path(args.log) if args.log else config.log.file
    if log is None:
        print(
            "mss-relay: report: log.file is standard output (journald): give the lines with"
            " --log FILE (journalctl -u mss-relay -o cat > FILE)",
            file=sys.stderr,
        )
        return 2
    now = datetime.now().astimezone()  # the system clock: faketime moves it
    try:
        since = parse_since(args.since, now)
    except ValueError as error:
        print(f"mss-relay: report: {error}", file=sys.stderr)
        return 2
    files = log_files(log)
    if not files:
        print(f"mss-relay: report: no log file at {log}", file=sys.stderr)
        return 1
    lines = LogLines(files)
    report = aggregate(lines, since, now, (bal.address for bal in config.bals))
    report = dataclasses.replace(
        report, files=tuple(f.name for f in files), problems=tuple(lines.problems)
    )
    for problem in lines.problems:
        print(f"mss-relay: report: {problem}", file=sys.stderr)
    if report.skipped:
        print(f"mss-relay: report: {report.skipped} unreadable line(s) skipped", file=sys.stderr)
    if not args.html:
        sys.stdout.write(render_text(report, now))
        return 0
    try:
        Path(args.html).write_text(render_html(report, now), encoding="utf-8")
    except OSError as error:
        print(f"mss-relay: report: cannot write {args.html}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"mss-relay: report written to {args.html}", file=sys.stderr)
    return 0


def _directory_in_force(socket: Path) -> None:
    """A running relay loads the new import at once (else within a second or
    two, by itself): the import's exit means it is in force."""
    from mss_relay import control

    try:
        reply = control.ask(socket, "directory")
    except control.NotRunning:
        return  # no relay running: it loads the import when it starts
    if reply.get("ok"):
        print(f"mss-relay: in force in the running relay ({reply.get('processes', 1)} process(es))")
    else:
        print(f"mss-relay: the running relay: {reply.get('error')}", file=sys.stderr)


def _directory(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from mss_relay import directory
    from mss_relay.state.database import StateLost
    from mss_relay.state.errors import STATE_ERRORS
    from mss_relay.state.postgres import SchemaTooNew

    # psycopg_pool's warnings (each failed connection attempt) would reach
    # stderr through logging's last resort: the command says it in one line.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    path = getattr(args, "config", None) or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        config = load_config(path)
        # PostgreSQL when state.database names one, else the SQLite file.
        database = config.postgres or config.database
        if args.action == "import":
            imported = directory.import_extraction(Path(args.file), database, force=args.force)
            print("mss-relay: directory imported: " + "\n".join(imported.lines()))
            _directory_in_force(config.control.socket)
            return 0
        if args.action == "search":
            found = asyncio.run(directory.search(database, " ".join(args.text)))
            limit = directory.SEARCH_LIMIT
            for line in found[:limit]:
                print(line)
            if len(found) > limit:
                print(f"mss-relay: more than {limit} BALs match: add a word")
            elif not found:
                print("mss-relay: no BAL matches", file=sys.stderr)
            return 0 if found else 1
        known, lines = asyncio.run(directory.show(database, args.address))
        for line in lines:
            print(line)
        if not lines:
            why = "not in the Annuaire Santé" if known else "no extraction imported yet"
            print(f"mss-relay: {args.address}: {why}", file=sys.stderr)
        return 0 if lines else 1
    except ConfigError as error:
        return _config_error(error)
    except directory.ExtractionError as error:
        print(f"mss-relay: directory import: {error}", file=sys.stderr)
        return 1
    except (StateLost, SchemaTooNew, OSError) as error:
        print(f"mss-relay: state database: {error}", file=sys.stderr)
        return 1
    except STATE_ERRORS as error:
        # libpq's message may go on with a hint on a second line.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"mss-relay: state database: {first}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("reload", "unlock"):
        return _control(args)
    if args.command == "bals":
        return _bals(args)
    if args.command == "whitelist":
        return _whitelist(args)
    if args.command == "report":
        return _report(args)
    if args.command == "conversations":
        return _conversations(args)
    if args.command == "directory":
        return _directory(args)
    if args.command == "audit" and args.action == "pseudonym":
        return _audit_pseudonym(args)
    if args.command == "audit" and args.action == "verify":
        return _audit_verify(args)
    if args.command == "state":
        return _state(args)
    if args.command == "serve":
        return _serve(args.config, args.worker)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "why":
        return _why(args)
    if args.command == "dkim-keygen":
        return _dkim_keygen(args)
    return _hash_password()
