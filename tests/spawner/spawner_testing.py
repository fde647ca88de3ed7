"""Constants shared by the spawner tests (a uniquely named module: conftest names clash across folders)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]
TOKEN = "tok-" + "5ecret" * 6
