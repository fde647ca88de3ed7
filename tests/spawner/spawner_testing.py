"""Constants shared by the spawner tests (a uniquely named module: conftest names clash across folders)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
AZS = ["us-east-1a", "us-east-1b", "us-east-1c"]
TOKEN = "tok-" + "5ecret" * 6


def live_instances(ec2, hub_id: str, user: str | None = None) -> list[dict]:
    filters = [{"Name": "tag:ec2hub:hub", "Values": [hub_id]},
               {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    if user:
        filters.append({"Name": "tag:ec2hub:user", "Values": [user]})
    return [i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]
