"""A test spawner that does the EC2Spawner's part of the notebook contract and nothing else.

EC2Spawner launches an instance, writes the server's env as the SecureString
``<secret_prefix><instance-id>`` (docs/ARCHITECTURE.md §4) and returns the instance's URL. Here the
instance is an :class:`~sandbox.host.IsolatedHost` the test already booted: ``start()`` writes the
secret for that instance id into the AWS emulator and returns the URL of a relay to the host's
:8888. The hub then waits for the server exactly as it waits for a real EC2 notebook.
"""

import json

import boto3
from jupyterhub.spawner import Spawner
from traitlets import Unicode


class SecretSpawner(Spawner):
    instance_id = Unicode(help="The isolated host's instance id.").tag(config=True)
    secret_prefix = Unicode(help="ec2hub:secret-prefix of the host.").tag(config=True)
    region = Unicode("us-east-1").tag(config=True)
    endpoint_url = Unicode(help="The AWS emulator, as the hub host sees it.").tag(config=True)
    server_url = Unicode(help="Where the hub reaches the host's :8888 (a relay).").tag(config=True)

    _started = False

    def _ssm(self):
        return boto3.client(
            "ssm", region_name=self.region, endpoint_url=self.endpoint_url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    async def start(self):
        # As EC2Spawner: the server binds 0.0.0.0:8888 on its instance (FACTS: set ip/port first).
        self.ip, self.port = "0.0.0.0", 8888
        env = self.get_env()
        self._ssm().put_parameter(
            Name=self.secret_prefix + self.instance_id, Value=json.dumps(env), Type="SecureString", Overwrite=True
        )
        self._started = True
        return self.server_url

    async def poll(self):
        return None if self._started else 0

    async def stop(self, now=False):
        self._started = False
