"""The README's first command: the demo configuration, as shipped, on loopback."""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
from pathlib import Path

import yaml

from tests.support.mail import make_message
from tests.support.processes import ROOT, Relay, free_port


def test_demo_config_relays_to_the_local_capture(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    demo["listeners"][0]["port"] = free_port()  # the shipped 10587 may be in use
    demo["log"]["file"] = "../var/log.jsonl"
    relay = Relay(tmp_path / "config", demo)
    relay.start()
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the demo's certificate is self-signed
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.starttls(context=context)
            client.login("demo", "demo")
            refused = client.sendmail(
                "demo@ch-demo.mssante.fr",
                ["confrere@chu-exemple.mssante.fr", "someone@gmail.com"],
                make_message(sender="demo@ch-demo.mssante.fr"),
            )
        assert list(refused) == ["someone@gmail.com"]
        captured = list((tmp_path / "var" / "capture").glob("*.eml"))
        assert len(captured) == 1
        envelope = json.loads(captured[0].with_suffix(".json").read_text())
        assert envelope["recipients"] == ["confrere@chu-exemple.mssante.fr"]
        assert (tmp_path / "var" / "demo-tls" / "relay.pem").exists()
    finally:
        assert relay.stop() == 0
    shutil.rmtree(tmp_path / "var")
