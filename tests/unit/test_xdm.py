"""core.xdm: IHE-XDM packages checked (issue 19 §2), each finding in refuse
and warn modes, hostile XML and zip bombs refused without being expanded."""

from __future__ import annotations

import tracemalloc
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core import mss_headers, xdm
from mss_relay.core.findings import Finding, Mode, decide
from mss_relay.core.message import archive_parts, inspect_message
from mss_relay.core.mss_headers import MssHeaders
from mss_relay.core.reply import Reply, ascii_text
from mss_relay.core.verdict import Action
from mss_relay.core.xdm import Attachment, XdmSettings, check_message, decision, examine, wanted
from tests.support import xdm as build
from tests.support.files import pdf, zip_of
from tests.support.mail import make_message

PRO = "dr.martin@chu-b.mssante.fr"
PATIENT_ADDRESS = f"{build.PATIENT}@patient.mssante.fr"
NONE = MssHeaders()


def _run(
    *packages: bytes,
    names: tuple[str, ...] = ("IHE_XDM.zip",),
    recipients: tuple[str, ...] = (PRO,),
    headers: MssHeaders = NONE,
    allow_test: bool = False,
    mode: Mode = Mode.REFUSE,
) -> xdm.XdmReport:
    attachments = [Attachment(names, p) for p in packages]
    return examine(attachments, headers, recipients, XdmSettings(mode, allow_test))


def test_a_valid_package_passes() -> None:
    report = _run(build.for_patient(), recipients=(PATIENT_ADDRESS, PRO))
    assert report.packages == 1
    assert report.findings == ()
    assert decision(report, XdmSettings(Mode.REFUSE)) is None
    assert [p.matricule for p in report.patients] == [build.PATIENT]


@pytest.mark.parametrize("oid", [build.NIR_OID, build.NIA_OID])
def test_nir_and_nia_pass(oid: str) -> None:
    assert _run(build.for_patient(oid=oid)).findings == ()


def _metadata(document_id: str | None = None, set_id: str | None = None) -> bytes:
    return build.package(metadata_xml=build.metadata(document_id, set_id))


# (package, recipients, finding code, SMTP reply, enhanced code)
CASES = [
    pytest.param(b"not a zip at all", (PRO,), "xdm_unreadable", "5.7.1", id="not-a-zip"),
    pytest.param(build.without_metadata(), (PRO,), "xdm_missing_metadata", "5.7.1", id="missing"),
    pytest.param(
        build.package(metadata_xml=build.NOT_XML), (PRO,), "xdm_invalid_metadata", "5.7.1", id="xml"
    ),
    pytest.param(
        build.package(metadata_xml=build.BILLION_LAUGHS),
        (PRO,),
        "xdm_unsafe_metadata",
        "5.7.1",
        id="billion-laughs",
    ),
    pytest.param(
        build.package(metadata_xml=build.EXTERNAL_ENTITY),
        (PRO,),
        "xdm_unsafe_metadata",
        "5.7.1",
        id="external-entity",
    ),
    pytest.param(_metadata("", ""), (PRO,), "xdm_missing_patient_id", "5.7.1", id="no-patient"),
    pytest.param(
        _metadata(f"{build.PATIENT}^^^&{build.NIR_OID}"),
        (PRO,),
        "xdm_invalid_patient_id",
        "5.7.1",
        id="not-cx",
    ),
    pytest.param(
        _metadata(build.cx("185057800608492")),  # its key is wrong
        (PRO,),
        "xdm_invalid_patient_id",
        "5.7.1",
        id="bad-key",
    ),
    pytest.param(
        _metadata(build.cx("IPP12345", build.OTHER_OID), build.cx("IPP12345", build.OTHER_OID)),
        (PRO,),
        "xdm_unknown_oid",
        "5.7.1",
        id="unknown-oid",
    ),
    pytest.param(
        build.for_patient(oid=build.TEST_NIR_OID), (PRO,), "xdm_test_identity", "5.7.1", id="test"
    ),
    pytest.param(
        build.for_patient(oid=build.TEST_NIA_OID), (PRO,), "xdm_test_identity", "5.7.1", id="test2"
    ),
    pytest.param(
        _metadata(build.cx(), build.cx(build.OTHER_PATIENT)),
        (PRO,),
        "xdm_several_patients",
        "5.7.1",
        id="two-patients",
    ),
    pytest.param(
        build.for_patient(build.OTHER_PATIENT),
        (PATIENT_ADDRESS,),
        "xdm_other_patient",
        "5.7.1",
        id="other-patient",
    ),
    pytest.param(build.bomb(), (PRO,), "xdm_unreadable", "5.7.1", id="zip-bomb"),
    pytest.param(build.lying_bomb(), (PRO,), "xdm_unreadable", "5.7.1", id="lying-zip-bomb"),
    pytest.param(
        build.package(compression=zipfile.ZIP_LZMA), (PRO,), "xdm_unreadable", "5.7.1", id="lzma"
    ),
]


@pytest.mark.parametrize(("package", "recipients", "code", "enhanced"), CASES)
def test_each_finding_refuses_in_refuse_mode(
    package: bytes, recipients: tuple[str, ...], code: str, enhanced: str
) -> None:
    report = _run(package, recipients=recipients)
    assert report.codes[0] == code, report.codes
    verdict = decision(report, XdmSettings(Mode.REFUSE))
    assert verdict is not None and verdict.action is Action.REJECT
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, enhanced)
    assert verdict.rule == "xdm" and code in verdict.reason
    # The text names the problem, never the patient.
    for text in (verdict.reply.text, verdict.reason, *(f.detail for f in report.findings)):
        assert build.PATIENT not in text and build.OTHER_PATIENT not in text


@pytest.mark.parametrize(("package", "recipients", "code", "enhanced"), CASES)
def test_each_finding_is_only_logged_in_warn_mode(
    package: bytes, recipients: tuple[str, ...], code: str, enhanced: str
) -> None:
    report = _run(package, recipients=recipients, mode=Mode.WARN)
    assert code in report.codes
    assert decision(report, XdmSettings(Mode.WARN)) is None


def test_off_mode_looks_at_nothing() -> None:
    report = _run(build.without_metadata(), mode=Mode.OFF)
    assert report == xdm.XdmReport(0, ())
    assert decision(report, XdmSettings(Mode.OFF)) is None


def test_test_identities_when_allowed() -> None:
    assert _run(build.for_patient(oid=build.TEST_NIR_OID), allow_test=True).findings == ()


def test_one_patient_per_message_across_packages() -> None:
    report = _run(build.for_patient(), build.for_patient(build.OTHER_PATIENT))
    assert report.packages == 2
    assert report.codes == ("xdm_several_patients",)
    assert _run(build.for_patient(), build.for_patient()).findings == ()


def test_across_subsets_of_one_package() -> None:
    two = build.package(subsets=[build.metadata(build.cx(build.OTHER_PATIENT))])
    assert "xdm_several_patients" in _run(two).codes


def test_every_metadata_is_read() -> None:
    # The second subset carries the bomb: one good METADATA.XML is not enough.
    two = build.package(subsets=[build.BILLION_LAUGHS])
    assert _run(two).codes == ("xdm_unsafe_metadata",)


def test_two_patient_recipients_cannot_both_match() -> None:
    other = f"{build.OTHER_PATIENT}@patient.mssante.fr"
    report = _run(build.for_patient(), recipients=(PATIENT_ADDRESS, other))
    assert report.codes == ("xdm_other_patient",)


def test_patient_address_case_and_corsica() -> None:
    corsica = build.OTHER_PATIENT  # 2A
    lower = f"{corsica.lower()}@PATIENT.mssante.fr"
    assert _run(build.for_patient(corsica), recipients=(lower,)).findings == ()


def test_detection_by_content_and_by_name() -> None:
    # Any zip holding IHE_XDM/, whatever its name.
    assert _run(build.without_metadata(), names=("envoi.zip",)).packages == 1
    # A zip without IHE_XDM/ is not a package; nor is an ordinary file.
    assert _run(zip_of({"a.pdf": pdf()}), names=("docs.zip",)).packages == 0
    assert _run(pdf(), names=("cr.pdf",)).packages == 0
    # Named IHE_XDM.zip, it is one, whatever it holds (case-insensitive).
    report = _run(zip_of({"a.pdf": pdf()}), names=("ihe_xdm.ZIP",))
    assert report.codes == ("xdm_missing_metadata",)


def test_metadata_path_is_strict() -> None:
    elsewhere = build.package(
        {"IHE_XDM/METADATA.XML": build.metadata(), "IHE_XDM/SUBSET01/DOC0001.XML": b"<x/>"}
    )
    assert _run(elsewhere).codes == ("xdm_missing_metadata",)
    lower = build.package({"ihe_xdm/subset01/metadata.xml": build.metadata()})
    assert _run(lower).findings == ()


def test_too_many_entries() -> None:
    files = {f"IHE_XDM/SUBSET01/DOC{n:05}.XML": b"<x/>" for n in range(xdm.MAX_ENTRIES + 1)}
    files["IHE_XDM/SUBSET01/METADATA.XML"] = build.metadata()
    assert _run(build.package(files)).codes == ("xdm_unreadable",)


def test_the_budget_is_for_the_whole_message() -> None:
    # Each METADATA.XML under the per-file bound, all of them above the total.
    big = build.metadata() + b" " * (xdm.MAX_METADATA_BYTES - 4096)
    packages = [build.package(metadata_xml=big)] * 5
    report = _run(*packages)
    assert "xdm_unreadable" in report.codes


def test_one_finding_per_code() -> None:
    package = build.package(subsets=[build.metadata(build.cx(oid=build.TEST_NIR_OID))] * 3)
    report = _run(build.for_patient(oid=build.TEST_NIR_OID), package)
    assert report.codes.count("xdm_test_identity") == 1


# X-MSS-INS: O without a package carrying an INS: reported, never refused.
@pytest.mark.parametrize(
    ("packages", "reported"),
    [
        ((), True),
        ((build.without_metadata(),), True),
        ((_metadata("", ""),), True),
        ((build.for_patient(),), False),
    ],
)
def test_ins_yes_without_package(packages: tuple[bytes, ...], reported: bool) -> None:
    headers = MssHeaders(ins=("O",))
    report = _run(*packages, headers=headers)
    assert ("mss_ins_without_package" in report.codes) is reported
    if not packages:
        assert decision(report, XdmSettings(Mode.REFUSE)) is None
    assert "mss_ins_without_package" not in _run(*packages, headers=MssHeaders(ins=("N",))).codes


def test_header_findings_are_part_of_the_report() -> None:
    report = _run(build.for_patient(), headers=MssHeaders(ins=("oui",)))
    assert report.codes == ("mss_header_malformed",)
    verdict = decision(report, XdmSettings(Mode.REFUSE))
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.6.0")


def test_decide_takes_the_first_refusable() -> None:
    reported = Finding("mss_ins_without_package", None)
    refused = Finding("xdm_test_identity", xdm.TEST_IDENTITY)
    assert decide((reported,), Mode.REFUSE) is None
    verdict = decide((reported, refused), Mode.REFUSE)
    assert verdict is not None and verdict.reply == xdm.TEST_IDENTITY
    assert verdict.reason == "mss_ins_without_package,xdm_test_identity"
    assert decide((refused,), Mode.WARN) is None


def test_patients_are_not_in_the_repr() -> None:
    report = _run(build.for_patient())
    assert build.PATIENT not in repr(report)


def test_from_a_real_message() -> None:
    """message.archive_parts() gives what examine() takes, from the wire."""
    raw = make_message(
        to=PATIENT_ADDRESS,
        attachments={"IHE_XDM.zip": build.for_patient(), "cr.pdf": pdf()},
    )
    info = inspect_message(raw)
    assert wanted(info)
    parts = archive_parts(raw)
    assert [names for names, _ in parts] == [("IHE_XDM.zip",)]
    attachments = [Attachment(names, data) for names, data in parts]
    report = examine(attachments, NONE, (PATIENT_ADDRESS,), XdmSettings(Mode.REFUSE))
    assert (report.packages, report.findings) == (1, ())
    other = make_message(attachments={"IHE_XDM.zip": build.for_patient(build.OTHER_PATIENT)})
    attachments = [Attachment(n, d) for n, d in archive_parts(other)]
    report = examine(attachments, NONE, (PATIENT_ADDRESS,), XdmSettings(Mode.REFUSE))
    assert report.codes == ("xdm_other_patient",)


def test_not_wanted_without_a_zip() -> None:
    assert not wanted(inspect_message(make_message(attachments={"cr.pdf": pdf()})))
    assert archive_parts(make_message(attachments={"cr.pdf": pdf()})) == ()


def test_a_package_inside_another_zip_is_checked() -> None:
    outer = zip_of({"IHE_XDM.zip": build.for_patient(build.OTHER_PATIENT), "cr.pdf": pdf()})
    report = _run(outer, names=("envoi.zip",), recipients=(PATIENT_ADDRESS,))
    assert (report.packages, report.codes) == (1, ("xdm_other_patient",))
    good = zip_of({"dossier/ihe_xdm.zip": build.for_patient()})
    assert _run(good, names=("envoi.zip",), recipients=(PATIENT_ADDRESS,)).findings == ()
    # As deep as the dangerous-attachment rule looks (core.filetypes), no deeper.
    two = zip_of({"b.zip": zip_of({"IHE_XDM.zip": build.for_patient(build.OTHER_PATIENT)})})
    assert _run(two, names=("a.zip",)).packages == 1
    three = zip_of({"b.zip": zip_of({"c.zip": zip_of({"IHE_XDM.zip": build.for_patient()})})})
    assert _run(three, names=("a.zip",)).codes == ("xdm_unreadable",)
    nested = zip_of({"IHE_XDM.zip": zip_of({"IHE_XDM.zip": build.for_patient()})})
    assert _run(zip_of({"IHE_XDM.zip": nested}), names=("a.zip",)).codes == (
        "xdm_missing_metadata",
    )


def test_archive_parts_through_the_standard_library() -> None:
    """A message core.mime's scan leaves to the standard library's parser
    (bare LF line ends): the same parts."""
    raw = make_message(attachments={"IHE_XDM.zip": build.for_patient()}).replace(b"\r\n", b"\n")
    parts = archive_parts(raw)
    assert [(names, data) for names, data in parts] == [(("IHE_XDM.zip",), build.for_patient())]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_hostile_bytes_never_raise(data: bytes) -> None:
    for blob in (data, build.package(metadata_xml=data)):
        report = _run(blob)
        assert report.packages == 1
        assert all(f.code.startswith("xdm_") for f in report.findings)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_hostile_identifiers_never_raise(value: str) -> None:
    report = _run(_metadata(value, value))
    assert report.codes == () or report.codes[0].startswith("xdm_")


def test_check_message_in_one_call() -> None:
    raw = make_message(attachments={"IHE_XDM.zip": build.for_patient(oid=build.TEST_NIR_OID)})
    raw = raw.replace(b"\r\n\r\n", b"\r\nX-MSS-INS: O\r\nX-MSS-NIL: mon logiciel\r\n\r\n", 1)
    info = inspect_message(raw)
    report = check_message(raw, info, (PRO,), XdmSettings(Mode.REFUSE))
    assert report.codes == ("mss_header_malformed", "xdm_test_identity")
    assert check_message(raw, info, (PRO,), XdmSettings(Mode.OFF)).codes == ()
    allowed = XdmSettings(Mode.REFUSE, allow_test_identities=True)
    plain = make_message()
    assert check_message(plain, inspect_message(plain), (PRO,), allowed).codes == ()


@pytest.mark.parametrize("xml", [build.BILLION_LAUGHS, build.EXTERNAL_ENTITY, build.NOT_XML])
def test_bombs_are_refused_as_invalid_metadata(xml: bytes) -> None:
    verdict = decision(_run(build.package(metadata_xml=xml)), XdmSettings(Mode.REFUSE))
    assert verdict is not None and verdict.reply is not None
    assert "METADATA.XML invalide" in verdict.reply.text
    # Nothing of /etc/passwd can reach a text or a log field.
    assert "root" not in verdict.reply.text and "root" not in verdict.reason


@pytest.mark.parametrize("blob", [build.bomb(), build.lying_bomb()], ids=["bomb", "lying"])
def test_a_zip_bomb_is_never_inflated(blob: bytes) -> None:
    """64 MiB of METADATA.XML deflated to some 64 KiB: the reader stops at
    its bound, so the memory it takes stays far below what it would inflate."""
    tracemalloc.start()
    try:
        report = _run(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.codes == ("xdm_unreadable",)
    # zipfile may hold a chunk and the joined result: some twice the bound.
    assert len(blob) < 2**20 and peak < 3 * xdm.MAX_METADATA_BYTES < 64 * 2**20


def test_reply_texts_fold_to_one_ascii_line() -> None:
    """What the fronts send (core.reply.ascii_text): within RFC 5321's 512
    octets with the code, the id the fronts add and the CRLF."""
    replies = [v for v in vars(xdm).values() if isinstance(v, Reply)]
    replies += [v for v in vars(mss_headers).values() if isinstance(v, Reply)]
    replies += list(mss_headers.REPEATED.values())
    assert len(replies) >= 15
    for reply in replies:
        text = ascii_text(reply.text)
        assert text.isascii() and len(text) < 400, text
        assert (reply.code, reply.enhanced[:2]) in {(550, "5.")}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (build.cx(), True),
        (build.cx() + "^NH", True),  # an identifier type code (CX.5)
        (build.cx() + "^INS", True),
        (build.cx() + "^NH^x", False),
        (build.cx() + "^", False),
        (f"{build.PATIENT}^^^ASIP-SANTE-INS-NIR&{build.NIR_OID}&ISO", False),  # HD.1 set
        (f"{build.PATIENT}^^^&{build.NIR_OID}&iso", False),
        (f" {build.cx()} ", True),
    ],
)
def test_cx_form(value: str, valid: bool) -> None:
    report = _run(_metadata(value, value))
    assert (report.findings == ()) is valid, report.codes
    if not valid:
        assert report.codes == ("xdm_invalid_patient_id",)
