"""report_test.py - checks bench/report.py's pairing of mproc's rows with
Python's and with the contenders' (run by ctest as bench_report).

Builds a directory of raw outputs as bench/run.sh leaves them, runs
report.py on it, and checks the JSON: the Python ratio as before, the best
contender picked by the row's direction, its ratio, "-" where no contender
has the row, and a unit mismatch or a failed contender reported, not
compared.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402

OUT = {
    "c": "tput\t100\titems/s\thigher\nlat\t2\tus\tlower\nalone\t5\tns\tlower\n"
         "units\t3\tGB/s\thigher\n",
    "python": "tput\t10\titems/s\thigher\nlat\t8\tus\tlower\n",
    "peer-area_a": "tput\t50\titems/s\thigher\tfast one\ntput\t20\titems/s\thigher\tslow one\n"
                   "lat\t1\tus\tlower\tfast one\nlat\tnan\tus\tlower\tslow one\n"
                   "units\t9\tMB/s\thigher\tfast one\nonly_peer\t7\tns\tlower\tfast one\n",
    "peer-area_b": "lat\t4\tus\tlower\n",
}
STATUS = {"c": "ok", "python": "ok", "peer-area_a": "ok", "peer-area_b": "ok",
          "peer-area_c": "not built: build/bench/peer_area_c"}


class Pairing(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        raw = os.path.join(self.dir.name, "raw")
        os.mkdir(raw)
        for side, text in OUT.items():
            with open(os.path.join(raw, "area.%s.out" % side), "w") as f:
                f.write(text)
        for side, text in STATUS.items():
            with open(os.path.join(raw, "area.%s.status" % side), "w") as f:
                f.write(text + "\n")
        self.json = os.path.join(self.dir.name, "latest.json")
        doc = os.path.join(self.dir.name, "BENCHMARKS.md")
        self.run = subprocess.run(
            [sys.executable, os.path.join(HERE, "report.py"), "--raw", raw, "--areas", "area",
             "--json", self.json, "--doc", doc, "--build", self.dir.name],
            capture_output=True, text=True, timeout=60)
        with open(self.json) as f:
            self.area = json.load(f)["areas"]["area"]
        self.rows = {r["workload"]: r for r in self.area["rows"]}
        with open(doc) as f:
            self.doc = f.read()

    def tearDown(self):
        self.dir.cleanup()

    def test_python_pairing_unchanged(self):
        self.assertEqual(self.run.returncode, 0, self.run.stderr)
        self.assertAlmostEqual(self.rows["tput"]["ratio"], 10.0)
        self.assertAlmostEqual(self.rows["lat"]["ratio"], 4.0)
        self.assertIsNone(self.rows["alone"]["python"])
        self.assertIsNone(self.rows["alone"]["ratio"])

    def test_best_peer_follows_direction(self):
        self.assertEqual(self.rows["tput"]["peer"], "fast one")
        self.assertEqual(self.rows["tput"]["peer_value"], 50)
        self.assertAlmostEqual(self.rows["tput"]["peer_ratio"], 2.0)
        self.assertEqual(self.rows["tput"]["peers"], {"fast one": 50, "slow one": 20})
        # lower is better: 1 us beats 4 us (a row without a name is named
        # after its program); a nan contender is kept but never best
        self.assertEqual(self.rows["lat"]["peer"], "fast one")
        self.assertAlmostEqual(self.rows["lat"]["peer_ratio"], 0.5)
        self.assertEqual(self.rows["lat"]["peers"], {"fast one": 1, "slow one": None, "area_b": 4})

    def test_rows_without_peers_show_dash(self):
        self.assertIsNone(self.rows["alone"]["peer"])
        self.assertIsNone(self.rows["alone"]["peer_ratio"])
        line = [l for l in self.doc.splitlines() if l.startswith("| alone |")][0]
        self.assertEqual(line, "| alone | 5 | - | - | - | - | ns (lower) |")

    def test_unit_mismatch_is_not_compared(self):
        self.assertIsNone(self.rows["units"]["peer"])
        self.assertTrue(any("units" in p and "MB/s" in p for p in self.area["problems"]))

    def test_row_only_a_peer_has(self):
        self.assertIsNone(self.rows["only_peer"]["mproc"])
        self.assertEqual(self.rows["only_peer"]["peer"], "fast one")
        self.assertIsNone(self.rows["only_peer"]["peer_ratio"])

    def test_missing_contender_is_reported_not_failed(self):
        self.assertTrue(any("peer-area_c" in p and "not built" in p for p in self.area["problems"]))
        self.assertEqual(self.run.returncode, 0)


class Format(unittest.TestCase):
    def test_four_and_five_fields(self):
        self.assertIsNotNone(report.ROW_RE.match("a\t1\tns\tlower"))
        self.assertEqual(report.ROW_RE.match("a\t1\tns\tlower\tglibc robust mutex").group(5),
                         "glibc robust mutex")
        self.assertIsNone(report.ROW_RE.match("a\t1\tns\tlower\t"))
        self.assertIsNone(report.ROW_RE.match("a\t1\tns\tsideways"))


if __name__ == "__main__":
    unittest.main()
