"""The sandbox's EFS: an instance gets only the root directory of the access point its tags name,
made as EFS makes it (CreationInfo), from the access point the emulator holds."""

from __future__ import annotations

import stat

from ec2spawner.payloads import access_point_params, home_uid

from sandbox.dataplane import DataPlane
from sandbox.host import EfsAccessPoint

from .conftest import REGION, client, needs_root

pytestmark = [needs_root]


def test_the_data_plane_gives_an_instance_only_its_access_points_root(aws, tmp_path):
    efs = client(aws, "efs")
    fs = efs.create_file_system(CreationToken="ec2hub-test-homes")["FileSystemId"]
    other_fs = efs.create_file_system(CreationToken="ec2hub-test-other")["FileSystemId"]
    ap = efs.create_access_point(**access_point_params(hub_id="h", file_system_id=fs, unix="jupyter-alice"))
    plane = DataPlane(ec2=client(aws, "ec2"), efs=efs, vpc=None, region=REGION, endpoint_port=0,
                      efs_root=tmp_path / "efs", state_root=tmp_path / "hosts")

    [point] = plane.access_points({"ec2hub:efs": fs, "ec2hub:efs-access-point": ap["AccessPointId"]})
    root = tmp_path / "efs" / fs / "home/jupyter-alice"
    assert point == EfsAccessPoint(fs, ap["AccessPointId"], root)
    uid = home_uid("jupyter-alice")
    assert (root.stat().st_uid, root.stat().st_gid, stat.S_IMODE(root.stat().st_mode)) == (uid, uid, 0o700)
    # An access point EFS does not know, one of another file system, or none: no EFS at all.
    for tags in ({"ec2hub:efs": fs, "ec2hub:efs-access-point": "fsap-0000000000000000f"},
                 {"ec2hub:efs": other_fs, "ec2hub:efs-access-point": ap["AccessPointId"]},
                 {"ec2hub:efs": fs}):
        assert plane.access_points(tags) == []
