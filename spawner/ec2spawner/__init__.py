"""ec2spawner: JupyterHub spawner for one EC2 instance per user server."""

__version__ = "0.1.0"
