"""A scrape during and after a reload counts every byte, and says what reloaded."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from echod.metrics.endpoint import RENDER_GAP
from tests.metrics.scrape import address_of, scrape, value
from tests.support import Echod, round_trip


def test_counters_hold_through_a_reload_and_its_series_say_so(tmp_path: Path) -> None:
    path = tmp_path / "echod.toml"
    text = 'listen = ["127.0.0.1:0"]\nworkers = 2\nmetrics = "127.0.0.1:0"\n'
    path.write_text(text)
    with Echod("--config", str(path)) as server:
        server.wait_for("ready: 2 workers serving")
        where = address_of(server)
        # Held open across the reload: its old worker drains, still counting it.
        held = server.connect()
        assert round_trip(held, b"x" * 1000) == b"x" * 1000
        assert value(scrape(where), "echod_received_bytes_total") == 1000
        path.write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{server.port}", 1))
        server.signal(signal.SIGHUP)
        server.wait_for("reload done: generation 2")
        time.sleep(RENDER_GAP)  # a scrape within the gap is answered from the last one
        during = scrape(where)
        assert value(during, "echod_received_bytes_total") == 1000
        assert value(during, "echod_reloads_total", kind="reload", result="ok") == 1
        assert value(during, "echod_reloads_total", kind="reload", result="refused") == 0
        assert value(during, "echod_config_generation") == 2
        assert value(during, "echod_workers", generation="2") == 2
        assert value(during, "echod_workers", generation="1") >= 1  # the one holding it
        assert round_trip(held, b"y" * 500) == b"y" * 500
        time.sleep(RENDER_GAP)
        assert value(scrape(where), "echod_received_bytes_total") == 1500
        held.close()
        path.write_text("workers = 'x'\n")
        server.signal(signal.SIGHUP)
        server.wait_for("reload refused")
        time.sleep(RENDER_GAP)
        after = scrape(where)
        assert value(after, "echod_reloads_total", kind="reload", result="refused") == 1
        assert value(after, "echod_received_bytes_total") == 1500
        assert server.stop() == 0
