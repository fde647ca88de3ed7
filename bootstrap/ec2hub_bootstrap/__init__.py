"""ec2hub's instance bootstrap: the code notebook and hub instances run, as ordinary files.

infra/userdata.py assembles each instance's user data from these files (docs/ARCHITECTURE.md §10).
On an instance bootstrap/ is copied to /opt/ec2hub/bootstrap (PYTHONPATH for this package) and the
steps run with /opt/ec2hub/venv's Python: standard library plus boto3 (the hub's: also ec2spawner),
nothing from the rest of the repository.
"""
