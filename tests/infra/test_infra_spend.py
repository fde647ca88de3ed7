"""The spend ledger's table, its grant and the price grant, and the budgets knob."""

from __future__ import annotations

import json

import pytest
from infra_testing import REQUIRED_CONTEXT, logical_id_by_description, policy_statements
from test_infra_settings import substitute

from infra.config import ConfigError, config_from_context, load_config


def _spend_table(s) -> str:
    (table,) = [lid for lid, r in s.resources("AWS::DynamoDB::Table").items()
                if "TableName" not in r["Properties"]]  # the lease table has a fixed name
    return table


@pytest.mark.parametrize(("name", "budgets"), [("default", {}), ("full", {"gpu-users": 500.0, "research": 120.5})])
def test_spend_table_is_on_demand_encrypted_recoverable_kept_and_in_the_settings(request, name, budgets):
    s = request.getfixturevalue(f"{name}_synth")
    table = _spend_table(s)
    resource = s.resources("AWS::DynamoDB::Table")[table]
    assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    assert {k: resource["Properties"][k] for k in ("BillingMode", "KeySchema", "SSESpecification",
                                                   "PointInTimeRecoverySpecification")} == {
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": "subject", "KeyType": "HASH"},
                      {"AttributeName": "month", "KeyType": "RANGE"}],
        "SSESpecification": {"SSEEnabled": True},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
    }
    (parameter,) = s.resources("AWS::SSM::Parameter").values()
    settings = json.loads(substitute(parameter["Properties"]["Value"], s.template))
    assert settings["spend_table"] == substitute({"Ref": table}, s.template)
    assert (settings["group_budgets_usd"], settings["budget_exempt_admins"]) == (budgets, False)


@pytest.mark.parametrize("name", ["default", "full"])
def test_hub_role_may_record_spend_in_its_table_and_read_public_prices(request, name):
    s = request.getfixturevalue(f"{name}_synth")
    table = _spend_table(s)
    statements = policy_statements(s, logical_id_by_description(s, "AWS::IAM::Role", "ec2hub hub host"))
    assert statements["RecordSpend"] == {
        "Sid": "RecordSpend", "Effect": "Allow",
        "Action": ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"],
        "Resource": {"Fn::GetAtt": [table, "Arn"]},
    }
    # No resource-level permissions exist for either action (see infra.hub.spend_statements).
    assert statements["ReadPrices"] == {
        "Sid": "ReadPrices", "Effect": "Allow",
        "Action": ["ec2:DescribeSpotPriceHistory", "pricing:GetProducts"], "Resource": "*",
    }
    others = [st for r in s.resources("AWS::IAM::Policy").values()
              for st in r["Properties"]["PolicyDocument"]["Statement"]
              if table in json.dumps(st) and st.get("Sid") != "RecordSpend"]
    assert others == []


def test_budgets_from_the_command_line_or_a_mapping():
    assert config_from_context({**REQUIRED_CONTEXT, "group_budgets_usd": "a=1, b c=2.5"}).group_budgets_usd == {
        "a": 1.0, "b c": 2.5}
    config = config_from_context({**REQUIRED_CONTEXT, "group_budgets_usd": {"gpu": 300},
                                  "budget_exempt_admins": "true"})
    assert (config.group_budgets_usd, config.budget_exempt_admins) == ({"gpu": 300.0}, True)
    assert config_from_context(REQUIRED_CONTEXT).group_budgets_usd == {}


@pytest.mark.parametrize(("value", "message"), [
    ("gpu=lots", "context group_budgets_usd: group 'gpu': 'lots' is not an amount in USD"),
    ("gpu", "context group_budgets_usd: group 'gpu': '' is not an amount in USD"),
    ("gpu=-5", "context group_budgets_usd: group 'gpu': '-5' must be at least 0"),
    ("=5", "context group_budgets_usd: '' is not a group name"),
    (7, "context group_budgets_usd: must be group=usd,... or a mapping, got 7"),
])
def test_a_bad_budget_is_a_one_line_error(value, message):
    with pytest.raises(ConfigError) as info:
        config_from_context({**REQUIRED_CONTEXT, "group_budgets_usd": value})
    assert str(info.value) == message


def test_budgets_in_the_configuration_file_and_a_bad_one_names_its_field(tmp_path):
    path = tmp_path / "ec2hub.yaml"
    path.write_text("identity: {admin_user: admin}\ntls: {allow_http: true}\n"
                    "spend: {group_budgets_usd: {gpu: 500, research: 120.5}, budget_exempt_admins: true}\n")
    config = load_config({}, path=path)
    assert (config.group_budgets_usd, config.budget_exempt_admins) == ({"gpu": 500.0, "research": 120.5}, True)
    # -c wins over the file, in its command-line form.
    assert load_config({"group_budgets_usd": "gpu=1"}, path=path).group_budgets_usd == {"gpu": 1.0}
    path.write_text("identity: {admin_user: admin}\ntls: {allow_http: true}\nspend: {group_budgets_usd: {gpu: lots}}\n")
    with pytest.raises(ConfigError) as info:
        load_config({}, path=path)
    assert str(info.value) == "ec2hub.yaml: spend.group_budgets_usd: group 'gpu': 'lots' is not an amount in USD"
