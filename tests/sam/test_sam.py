"""The SAM application (template.yaml, samconfig.toml, layer/Makefile), offline: no AWS account.

`sam build` must run layer/build.py (the recipe of `make layer`) and copy the example function;
`sam validate --lint` must pass; and the template, as CloudFormation would deploy it, must give
the function the variable and the one IAM permission that match the key parameter used.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from samcli.lib.package.utils import make_zip_with_lambda_permissions, zip_folder
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAM = Path(sys.executable).parent / "sam"
TIMEOUT_S = 90
LAYER = "PostHogLambdaLayer"
FUNCTION = "ExampleFunction"
SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:posthog-AbCdEf"
ACCOUNT = "123456789012"
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def sam_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """No AWS credentials or profile of the machine's, a fake region, no telemetry; SAM's own
    settings in a temporary directory (marked as version-checked, so no call to PyPI); and the
    layer built with this interpreter, which has the packages build.py bundles."""
    app_dir = tmp_path_factory.mktemp("sam-app-dir")
    (app_dir / "metadata.json").write_text(f'{{"lastVersionCheck": {time.time()}, "telemetryEnabled": false}}')
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        __SAM_CLI_APP_DIR=str(app_dir),
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        PYTHON=sys.executable,
    )
    return env


def _sam(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SAM), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def built(sam_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    build_dir = tmp_path_factory.mktemp("sam-build") / "build"
    result = _sam(sam_env, "build", "--template-file", "template.yaml", "--build-dir", build_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Build Succeeded" in result.stdout, result.stdout + result.stderr
    return build_dir


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def test_sam_build_lays_out_the_layer(built: Path) -> None:
    layer = built / LAYER
    launcher = layer / "extensions" / "posthog-lambda"
    assert launcher.is_file()
    assert launcher.stat().st_mode & 0o111 == 0o111, oct(launcher.stat().st_mode)
    assert (layer / "python" / "posthog_lambda" / "__init__.py").is_file()
    private = layer / "posthog-lambda-extension"
    assert (private / "bootstrap.py").is_file()
    assert (private / "posthog_lambda_extension" / "__main__.py").is_file()
    assert (private / "posthog_lambda_contract" / "__init__.py").is_file()
    assert (layer / "python" / "posthog_lambda_contract" / "__init__.py").is_file()
    assert not (private / "posthog_lambda").exists()  # the extension takes only the contract


def test_sam_build_runs_the_same_recipe_as_build_py(built: Path, tmp_path: Path) -> None:
    direct = tmp_path / "layer"
    subprocess.run([sys.executable, ROOT / "layer" / "build.py", direct], check=True, timeout=TIMEOUT_S)
    assert _files(built / LAYER) == _files(direct)
    launcher = Path("extensions") / "posthog-lambda"
    assert (built / LAYER / launcher).read_bytes() == (direct / launcher).read_bytes()


def test_sam_build_copies_the_example_function(built: Path) -> None:
    function = built / FUNCTION
    assert (function / "app.py").read_bytes() == (ROOT / "examples" / "llm_app" / "app.py").read_bytes()
    assert not (function / "Makefile").exists()
    assert not list(function.rglob("__pycache__"))


def test_built_template_points_at_the_artifacts(built: Path) -> None:
    resources = yaml_parse((built / "template.yaml").read_text())["Resources"]
    assert (built / resources[LAYER]["Properties"]["ContentUri"]).resolve() == (built / LAYER).resolve()
    assert (built / resources[FUNCTION]["Properties"]["CodeUri"]).resolve() == (built / FUNCTION).resolve()


def test_deployed_zip_keeps_the_launcher_executable(built: Path) -> None:
    """What `sam deploy` uploads: SAM zips the built layer with its own permission rules."""
    with zip_folder(str(built / LAYER), make_zip_with_lambda_permissions) as (archive, _md5):
        mode = zipfile.ZipFile(archive).getinfo("extensions/posthog-lambda").external_attr >> 16
    assert stat.S_ISREG(mode)
    assert mode & 0o111 == 0o111, oct(mode)


def test_sam_validate_lint_passes(sam_env: dict[str, str]) -> None:
    result = _sam(sam_env, "validate", "--lint", "--template-file", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout


def test_sam_validate_lint_would_catch_a_mistake(sam_env: dict[str, str], tmp_path: Path) -> None:
    """The check above is not vacuous: the same command fails on a broken copy of the template."""
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("MemorySize: 256", "MemorySize: 99999"))
    result = _sam(sam_env, "validate", "--lint", "--template-file", broken)
    assert result.returncode != 0
    assert "E3034" in result.stdout + result.stderr


# The template as CloudFormation would deploy it ------------------------------------------------

_NO_VALUE = object()


class _Stack:
    """The SAM-transformed template resolved for some parameter values, as CloudFormation would:
    conditions and rules evaluated, Fn::If chosen, AWS::NoValue dropped. References to resources
    and attributes stay as they are."""

    def __init__(self, parameters: dict[str, str]) -> None:
        template = yaml_parse(TEMPLATE.read_text())
        # Local paths are what `sam package` replaces with S3 locations; the transform wants those.
        template["Resources"][LAYER]["Properties"]["ContentUri"] = "s3://bucket/layer.zip"
        template["Resources"][FUNCTION]["Properties"]["CodeUri"] = "s3://bucket/function.zip"
        self.values = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
        self.values.update(parameters)
        self.values.update({"AWS::Region": REGION, "AWS::Partition": "aws", "AWS::AccountId": ACCOUNT})
        self.template = transform(template, dict(parameters), _NoManagedPolicies())

    def rules_pass(self) -> bool:
        return all(self.value(a["Assert"]) for rule in self.template["Rules"].values() for a in rule["Assertions"])

    def resource(self, kind: str) -> dict[str, Any]:
        [found] = [r for r in self.template["Resources"].values() if r["Type"] == kind]
        resolved: dict[str, Any] = self.value(found)
        return resolved

    def logical_id(self, kind: str) -> str:
        [found] = [name for name, r in self.template["Resources"].items() if r["Type"] == kind]
        return found

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [item for item in map(self.value, node) if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(function, argument)] = node.items()
            if function == "Ref":
                return _NO_VALUE if argument == "AWS::NoValue" else self.values.get(argument, node)
            if function == "Condition":
                return self.value(self.template["Conditions"][argument])
            if function == "Fn::If":
                condition, if_true, if_false = argument
                return self.value(if_true if self.value({"Condition": condition}) else if_false)
            if function == "Fn::Equals":
                left, right = self.value(argument)
                return left == right
            if function == "Fn::Not":
                return not self.value(argument[0])
            if function == "Fn::And":
                return all(self.value(argument))
            if function == "Fn::Or":
                return any(self.value(argument))
            if function == "Fn::Split":
                separator, text = self.value(argument)
                return text.split(separator)
            if function == "Fn::Select":
                index, items = self.value(argument)
                return items[int(index)]
            if function == "Fn::Sub":
                return re.sub(r"\$\{([^}]+)\}", lambda m: self.values.get(m.group(1), m.group(0)), argument)
        return {key: item for key, item in ((k, self.value(v)) for k, v in node.items()) if item is not _NO_VALUE}

    def function_variables(self) -> dict[str, str]:
        variables: dict[str, str] = self.resource("AWS::Lambda::Function")["Properties"]["Environment"]["Variables"]
        return variables

    def role_statements(self) -> list[dict[str, Any]]:
        role = self.resource("AWS::IAM::Role")["Properties"]
        assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
        return [s for policy in role.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


class _NoManagedPolicies:
    """The transform asks IAM for managed policy names only when a template uses one; ours does not."""

    def load(self) -> dict[str, str]:
        raise AssertionError("the template should not need IAM's list of managed policies")


@pytest.fixture
def region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


KEY_SOURCES = {
    "api key": (
        {"PostHogApiKey": "phc_test"},
        {"POSTHOG_API_KEY": "phc_test"},
        [],
    ),
    "secret": (
        {"PostHogApiKey": "none", "PostHogApiKeySecretArn": SECRET_ARN},
        {"POSTHOG_API_KEY_SECRET_ARN": SECRET_ARN},
        [
            {
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": [SECRET_ARN, SECRET_ARN + "-??????"],
            }
        ],
    ),
    "ssm path": (
        {"PostHogApiKeySsmParameter": "/posthog/api-key"},
        {"POSTHOG_API_KEY_SSM_PARAMETER": "/posthog/api-key"},
        [
            {
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/posthog/api-key",
            }
        ],
    ),
    "ssm name": (
        {"PostHogApiKeySsmParameter": "posthog-api-key"},
        {"POSTHOG_API_KEY_SSM_PARAMETER": "posthog-api-key"},
        [
            {
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/posthog-api-key",
            }
        ],
    ),
}


@pytest.mark.usefixtures("region")
@pytest.mark.parametrize(("parameters", "key_variable", "statements"), KEY_SOURCES.values(), ids=KEY_SOURCES.keys())
def test_each_key_source_gets_its_variable_and_only_its_permission(
    parameters: dict[str, str], key_variable: dict[str, str], statements: list[dict[str, Any]]
) -> None:
    stack = _Stack({**parameters, "PostHogHost": "https://eu.i.posthog.com", "PostHogFlushMode": "end"})
    assert stack.rules_pass()
    assert stack.function_variables() == {
        "POSTHOG_HOST": "https://eu.i.posthog.com",
        "POSTHOG_LAMBDA_FLUSH": "end",
        **key_variable,
    }
    assert stack.role_statements() == statements


@pytest.mark.usefixtures("region")
@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"PostHogApiKey": "none"},
        {"PostHogApiKey": "phc_test", "PostHogApiKeySecretArn": SECRET_ARN},
        {"PostHogApiKeySecretArn": SECRET_ARN, "PostHogApiKeySsmParameter": "/posthog/api-key"},
    ],
    ids=["none set", "key none", "key and secret", "secret and ssm"],
)
def test_rules_want_exactly_one_key_source(parameters: dict[str, str]) -> None:
    assert not _Stack(parameters).rules_pass()


@pytest.mark.usefixtures("region")
def test_layer_and_function_defaults() -> None:
    stack = _Stack({"PostHogApiKey": "phc_test"})
    layer = stack.resource("AWS::Lambda::LayerVersion")
    assert layer["DeletionPolicy"] == "Retain"
    assert layer["Properties"]["LayerName"] == "posthog-lambda"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.11", "python3.12", "python3.13", "python3.14"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["x86_64", "arm64"]
    function = stack.resource("AWS::Lambda::Function")["Properties"]
    assert function["Layers"] == [{"Ref": stack.logical_id("AWS::Lambda::LayerVersion")}]
    assert function["Handler"] == "app.handler"
    assert function["Runtime"] == "python3.13"
    assert function["Environment"]["Variables"]["POSTHOG_HOST"] == "https://us.i.posthog.com"
    assert function["Environment"]["Variables"]["POSTHOG_LAMBDA_FLUSH"] == "adaptive"
    outputs = stack.value(stack.template["Outputs"])
    assert outputs["LayerVersionArn"]["Value"] == {"Ref": stack.logical_id("AWS::Lambda::LayerVersion")}
    assert outputs["ExampleFunctionName"]["Value"] == {"Ref": stack.logical_id("AWS::Lambda::Function")}


def test_samconfig_deploys_with_sensible_defaults() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())["default"]
    assert config["global"]["parameters"]["stack_name"] == "posthog-lambda"
    assert config["build"]["parameters"]["cached"] is False
    deploy = config["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is True
    assert "region" not in deploy
    parameters = yaml_parse(TEMPLATE.read_text())["Parameters"]
    overridden = re.findall(r'(\w+)="', deploy["parameter_overrides"])
    assert overridden
    assert set(overridden) <= set(parameters)
    assert "PostHogApiKey" not in overridden


@pytest.mark.parametrize(
    ("parameter", "accepted", "rejected"),
    [
        ("PostHogApiKeySecretArn", ["", SECRET_ARN], ["posthog", "arn:aws:ssm:eu-west-1:123456789012:parameter/x"]),
        ("PostHogApiKeySsmParameter", ["", "/posthog/api-key", "posthog-api-key"], ["a b", "posthog:key"]),
        ("PostHogHost", ["https://us.i.posthog.com", "http://localhost:8000"], ["", "us.i.posthog.com"]),
    ],
)
def test_parameter_patterns(parameter: str, accepted: list[str], rejected: list[str]) -> None:
    pattern = yaml_parse(TEMPLATE.read_text())["Parameters"][parameter]["AllowedPattern"]
    assert all(re.fullmatch(pattern, value) for value in accepted)
    assert not any(re.fullmatch(pattern, value) for value in rejected)
