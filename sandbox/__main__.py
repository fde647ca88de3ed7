"""`python -m sandbox up|down|deploy|status|inject`: the local sandbox's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="ec2hub on one machine, against an AWS emulator")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the sandbox in the foreground (Ctrl-C stops it)")
    up.add_argument("--pending-s", type=float, default=2.0, help="how long new instances stay pending (default 2)")
    up.add_argument("--port", type=int, default=8000, help="the hub's port on 127.0.0.1 (default 8000)")
    up.add_argument("--two-accounts", action="store_true",
                    help="also a target account B (222222222222, eu-central-1) with its own VPC, peered, and a "
                         "class 'research' launching there (docs/DEPLOY.md, Adding a target account)")
    commands.add_parser("down", help="stop a running sandbox and remove what a crashed one left")
    deploy = commands.add_parser("deploy", help="redeploy the current tree into the running sandbox, as cdk deploy "
                                 "would (a changed hub launch template replaces the hub host)")
    deploy.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE",
                        help="CDK context, as cdk deploy -c takes it (e.g. catalog=<path>)")
    deploy.add_argument("--source", type=Path, metavar="DIR",
                        help="deploy the tree at DIR instead (another checkout of this repository, e.g. a "
                        "changed bootstrap/), with this repository's CDK CLI and virtualenv")
    deploy.add_argument("--pause-before-cleanup", action="store_true",
                        help="in a hub host replacement, once the new host has signalled, wait for a line on "
                        "stdin before the old host is terminated (two hub hosts alive, as in a slow cleanup)")
    commands.add_parser("status", help="list instances: state, class, who owns each and what the sweeper intends")
    inject = commands.add_parser("inject", help="inject a fault: into the AWS emulator, or a hard kill of the hub")
    faults = inject.add_subparsers(dest="fault", required=True)
    capacity = faults.add_parser("capacity", help="InsufficientInstanceCapacity for a type in an AZ")
    capacity.add_argument("--az", required=True)
    capacity.add_argument("--type", required=True, dest="instance_type")
    faults.add_parser("throttle", help="RequestLimitExceeded on RunInstances beyond EC2's bucket (5 burst, 2/s)")
    spot = faults.add_parser("spot-interruption", help="interrupt a (spot) instance")
    spot.add_argument("instance_id")
    terminate = faults.add_parser("terminate", help="terminate an instance behind the hub's back")
    terminate.add_argument("instance_id")
    outage = faults.add_parser("outage", help="EC2 and SSM unreachable for N seconds (connection errors), then back")
    outage.add_argument("--seconds", type=float, required=True)
    faults.add_parser("kill-hub", help="SIGKILL the hub process on the hub host; its service manager restarts it")
    faults.add_parser("clear", help="remove every injected fault (and end an outage)")
    pending = faults.add_parser("pending", help="set how long new instances stay pending")
    pending.add_argument("seconds", type=float)
    args = parser.parse_args(argv)

    from . import runner

    if args.command == "up":
        return runner.up(args.pending_s, args.port, two_accounts=args.two_accounts)
    if args.command == "down":
        return runner.down()
    if args.command == "deploy":
        context = dict(item.partition("=")[::2] for item in args.context)
        return runner.redeploy(context, source=(args.source or runner.REPO).resolve(),
                               pause_before_cleanup=args.pause_before_cleanup)
    if args.command == "status":
        return runner.status()
    return _inject(args)


def _inject(args) -> int:
    from .emulator import EmulatorClient
    from .runner import ENV_FILE

    if not ENV_FILE.exists():
        print("sandbox: not running (no .sandbox/env.json)", file=sys.stderr)
        return 1
    env = json.loads(ENV_FILE.read_text())
    if args.fault == "kill-hub":
        return _kill_hub(env)
    client = EmulatorClient(env["aws_endpoint_url"])
    if args.fault == "outage":
        reply = client.outage(args.seconds)
    elif args.fault == "capacity":
        reply = client.faults(capacity=[{"az": args.az, "instance_type": args.instance_type}])
    elif args.fault == "throttle":
        reply = client.faults(throttle={"burst": 5, "per_second": 2})
    elif args.fault == "spot-interruption":
        reply = client.terminate(args.instance_id, spot=True)
    elif args.fault == "terminate":
        reply = client.terminate(args.instance_id)
    elif args.fault == "pending":
        reply = client.faults(pending_s=args.seconds)
    else:
        client.outage(0)
        reply = client.faults(clear_capacity=True, throttle=None)
    print(json.dumps(reply, indent=2))
    return 0


def _kill_hub(env: dict) -> int:
    from .faults import FaultError, kill_hub

    try:
        result = kill_hub(env["hub_instance_id"])
    except FaultError as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if not result["systemd"]:
        print("sandbox: the hub host has no systemd as PID 1, so nothing restarts the hub "
              "(run `python -m sandbox down` and `up` again)", file=sys.stderr)
        return 0
    if not result["restarted"]:
        print("sandbox: systemd has not restarted the hub yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
