"""Cold start of the desktop app to its first painted snapshot (goal: under 1.5 s).

Each run is a fresh interpreter (``--child``) that imports kvwall, builds the real app
(Poller + Engine + window), polls the real machine once and paints the result; the time
is measured from just before the child process is spawned to the first paint of the
memory gauge that shows the polled data. Runs offscreen unless ``--xcb`` is given.

    python benchmarks/bench_gui_startup.py [--runs 5] [--xcb]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(t_spawn: float) -> None:
    t_start = time.time()
    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication(["kvwall"])
    t_qt = time.time()
    from pathlib import Path

    from kvwall.app.desktop.gui import KvwallApp
    from kvwall.app.desktop.live import LiveSource
    from kvwall.app.desktop.settings import SettingsStore

    t_import = time.time()
    marks: dict[str, float] = {}
    source = LiveSource()
    kv = KvwallApp(source, SettingsStore(Path(tempfile.mkdtemp()) / "s.json"), use_tray=False)

    class PaintSpy(QObject):
        def eventFilter(self, obj, event):  # noqa: N802
            if event.type() == QEvent.Type.Paint and "result" in marks and "paint" not in marks:
                marks["paint"] = time.time()
                QTimer.singleShot(0, app.quit)
            return False

    spy = PaintSpy()

    def on_result(_):
        if "result" not in marks:
            marks["result"] = time.time()
            for g in kv.window.gauges.gauges().values():
                g.bar.installEventFilter(spy)
                g.bar.update()

    kv.result_shown.connect(on_result)
    kv.start(show_window=True)
    QTimer.singleShot(20000, app.quit)
    app.exec()
    kv.stop()
    source.close()
    print(json.dumps({
        "interpreter_s": t_start - t_spawn, "qapp_s": t_qt - t_spawn,
        "imports_s": t_import - t_spawn, "first_result_s": marks.get("result", 0) - t_spawn,
        "first_paint_s": marks.get("paint", 0) - t_spawn}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--xcb", action="store_true")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "xcb" if args.xcb else "offscreen"
    with tempfile.TemporaryDirectory() as home:
        for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
            env[var] = os.path.join(home, var)
        rows = []
        for _ in range(args.runs):
            t0 = time.time()
            out = subprocess.run([sys.executable, __file__, "--child", repr(t0)], env=env,
                                 capture_output=True, text=True, timeout=120)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not line:
                print(out.stderr[-2000:])
                return 1
            rows.append(json.loads(line[-1]))
    print(f"cold start to first painted snapshot ({env['QT_QPA_PLATFORM']}, {args.runs} runs, "
          "goal < 1.5 s)")
    for key in ("interpreter_s", "qapp_s", "imports_s", "first_result_s", "first_paint_s"):
        vals = [r[key] for r in rows]
        print(f"  {key:15s} median {statistics.median(vals):6.3f} s   "
              f"min {min(vals):6.3f}   max {max(vals):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
