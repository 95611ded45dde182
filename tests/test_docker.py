"""The docker image and compose stack: their configs agree with each other and with the repo.

No docker engine runs here, so nothing is built or started; instead every cross-reference the
stack depends on is followed: bind mounts to files that exist, ports to the services that listen
on them, rule files to the Prometheus that loads them, the datasource uid to the dashboards, the
torch pin to scripts/install. `docker compose config` runs where a compose client exists.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

import prom_harness as ph

DOCKER_DIR = ph.ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
DOCKERIGNORE = DOCKER_DIR / "Dockerfile.dockerignore"
INSTALL_SCRIPT = ph.ROOT / "scripts" / "install"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROMETHEUS_DEFAULT_PORT = 9090


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def bind_mounts(service: dict) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of a service's short-syntax bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DOCKER_DIR / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path(service: dict, container_path: str) -> Path | None:
    """The host file or directory a container path of ``service`` comes from, via its mounts."""
    wanted = PurePosixPath(container_path)
    for source, target in bind_mounts(service):
        if wanted == target:
            return source
        if target in wanted.parents:
            return source / wanted.relative_to(target)
    return None


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``--flag value`` or ``--flag=value`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def load_mounted_yaml(service: dict, container_path: str) -> dict:
    path = host_path(service, container_path)
    assert path is not None and path.is_file(), f"{container_path} is not mounted from a file"
    return yaml.safe_load(path.read_text())


def prometheus_config(services) -> dict:
    prometheus = services["prometheus"]
    return load_mounted_yaml(prometheus, flag_value(prometheus["command"], "--config.file"))


def torch_pin(text: str) -> str:
    pins = set(re.findall(r"torch==([0-9][0-9a-z.+]*)", text))
    assert len(pins) == 1, f"expected exactly one torch pin, found {pins or 'none'}"
    return pins.pop()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


# -- compose as a whole -------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_accepted_by_docker_compose():
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose client here (neither the compose plugin nor docker-compose)")
    result = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_stack_has_the_job_prometheus_grafana_and_a_collector(services):
    assert {"trainer", "prometheus", "grafana", "otel-collector"} <= set(services)


def test_every_bind_mount_source_exists(services):
    for name, service in services.items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_published_ports_bind_loopback_only(services):
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_installs_the_torch_pin_of_the_install_script():
    assert torch_pin(DOCKERFILE.read_text()) == torch_pin(INSTALL_SCRIPT.read_text())


def test_dockerfile_takes_cpu_torch_from_the_cpu_index_as_an_extra_index():
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    (install,) = [args for args in runs if "torch==" in args]
    assert f"--extra-index-url {CPU_INDEX}" in install
    assert "--index-url" not in install.replace("--extra-index-url", "")


def test_image_runs_elastiscope_run():
    (entrypoint,) = [args for keyword, args in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["elastiscope", "run"]


def test_compose_builds_the_trainer_from_the_dockerfile_at_the_repository_root(services):
    build = services["trainer"]["build"]
    assert (DOCKER_DIR / build["context"]).resolve() == ph.ROOT
    assert (ph.ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerignore_lets_every_copied_source_through():
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded from the context"


def image_path_to_repo(container_path: str) -> Path | None:
    """The repository file a path inside the image comes from, following WORKDIR and COPY."""
    workdir = PurePosixPath("/")
    wanted = PurePosixPath(container_path)
    for keyword, args in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword == "COPY":
            *sources, destination = args.split()
            target = workdir / destination
            for source in sources:
                # Several sources land inside the destination directory, one is renamed to it.
                copied = target / PurePosixPath(source).name if len(sources) > 1 else target
                if wanted == copied or copied in wanted.parents:
                    return ph.ROOT / source / wanted.relative_to(copied)
    return None


def test_the_script_the_stack_runs_is_in_the_image(services):
    for args in (services["trainer"]["command"],
                 yaml.safe_load(dict(dockerfile_instructions())["CMD"])):
        script = next(arg for arg in args if arg.endswith(".py"))
        source = image_path_to_repo(script)
        assert source is not None and source.is_file(), f"{script} is not copied into the image"


def stack_commands(services) -> dict[str, list[str]]:
    """The `elastiscope run` arguments of the compose trainer and of the image's default CMD."""
    return {"compose trainer": services["trainer"]["command"],
            "image CMD": yaml.safe_load(dict(dockerfile_instructions())["CMD"])}


def parse_run_command(args: list[str]):
    cli = pytest.importorskip("agent.cli", reason="agent/cli.py (elastiscope run) not built yet")
    parsed = cli.build_run_parser().parse_args(args)
    # The script lives in the image; check the command against the file it is copied from.
    parsed.training_script = str(image_path_to_repo(parsed.training_script))
    cli.check_run_args(parsed)
    return parsed


def test_stack_commands_are_accepted_by_elastiscope_run(services):
    for where, args in stack_commands(services).items():
        parsed = parse_run_command(args)
        assert parsed.metrics_port == 9400, where


def test_stack_commands_are_accepted_by_the_example(services):
    spec = importlib.util.spec_from_file_location("train_ddp", ph.ROOT / "examples" / "train_ddp.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for where, args in stack_commands(services).items():
        options = example.parse_args(parse_run_command(args).training_script_args)
        assert options.crash_once_rank is not None and options.crash_at_step is not None, where


def test_trainer_endpoint_without_token_is_not_published(services):
    trainer = services["trainer"]
    parsed = parse_run_command(trainer["command"])
    if parsed.token is None and "ELASTISCOPE_TOKEN" not in trainer.get("environment", {}):
        assert not trainer.get("ports"), "an endpoint without a token must stay inside the stack"


# -- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_reads_the_mounted_config(services):
    prometheus = services["prometheus"]
    assert host_path(prometheus, flag_value(prometheus["command"], "--config.file")) == \
        DOCKER_DIR / "prometheus.yml"


def mounted_rule_files(services) -> list[Path]:
    prometheus = services["prometheus"]
    patterns = prometheus_config(services)["rule_files"]
    return [source for source, target in bind_mounts(prometheus)
            if any(fnmatch.fnmatch(str(target), pattern) for pattern in patterns)]


def test_prometheus_loads_the_elastiscope_rules(services):
    assert ph.RULES_FILE in mounted_rule_files(services)


def test_prometheus_config_and_its_rules_pass_promtool(services, tmp_path):
    # promtool cannot see the container's paths; point rule_files at the files mounted there.
    config = prometheus_config(services)
    config["rule_files"] = [str(path) for path in mounted_rule_files(services)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = ph.promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ph.load_rules())} rules found" in result.stdout + result.stderr


def test_prometheus_scrapes_the_trainer_metrics_port(services):
    jobs = {job["job_name"]: job for job in prometheus_config(services)["scrape_configs"]}
    targets = [t for static in jobs["elastiscope"]["static_configs"] for t in static["targets"]]
    command = services["trainer"]["command"]
    assert targets == [f"trainer:{flag_value(command, '--metrics-port')}"]
    # Another container scrapes it: the endpoint must listen beyond loopback.
    assert flag_value(command, "--metrics-host") == "0.0.0.0"


# -- Grafana ------------------------------------------------------------------------------------


def grafana_provisioning(services, kind: str) -> list[dict]:
    grafana = services["grafana"]
    directory = host_path(grafana, "/etc/grafana/provisioning")
    assert directory is not None, "Grafana's provisioning directory is not mounted"
    return [yaml.safe_load(path.read_text()) for path in sorted((directory / kind).glob("*.yml"))]


def test_grafana_provisioning_comes_from_the_dashboards_directory(services):
    assert host_path(services["grafana"], "/etc/grafana/provisioning") == \
        ph.ROOT / "dashboards" / "grafana" / "provisioning"


def test_grafana_datasource_points_at_the_prometheus_service(services):
    (document,) = grafana_provisioning(services, "datasources")
    (source,) = document["datasources"]
    url = urlparse(source["url"])
    listen = flag_value(services["prometheus"]["command"], "--web.listen-address")
    assert url.hostname == "prometheus" and url.hostname in services
    assert url.port == (port_of(listen) if listen else PROMETHEUS_DEFAULT_PORT)


def test_grafana_datasource_interval_matches_the_scrape_interval(services):
    (document,) = grafana_provisioning(services, "datasources")
    (source,) = document["datasources"]
    assert source["jsonData"]["timeInterval"] == prometheus_config(services)["global"]["scrape_interval"]


def test_dashboards_use_the_provisioned_datasource_uid(services):
    (document,) = grafana_provisioning(services, "datasources")
    uid = document["datasources"][0]["uid"]
    for file_name, dashboard in ph.load_dashboards().items():
        (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert variable["current"]["value"] == uid, file_name


def test_grafana_provisions_every_committed_dashboard(services):
    (document,) = grafana_provisioning(services, "dashboards")
    (provider,) = document["providers"]
    directory = host_path(services["grafana"], provider["options"]["path"])
    assert directory == ph.DASHBOARDS_DIR
    assert sorted(p.name for p in directory.glob("*.json")) == sorted(ph.load_dashboards())


def test_grafana_home_dashboard_is_a_mounted_dashboard(services):
    grafana = services["grafana"]
    home = host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file()


# -- OpenTelemetry collector --------------------------------------------------------------------


def collector_config(services) -> dict:
    collector = services["otel-collector"]
    return load_mounted_yaml(collector, flag_value(collector["command"], "--config"))


def test_trainer_sends_otlp_to_the_collector_http_receiver(services):
    endpoint = urlparse(services["trainer"]["environment"]["ELASTISCOPE_OTLP_ENDPOINT"])
    receiver = collector_config(services)["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert endpoint.hostname == "otel-collector" and endpoint.hostname in services
    assert endpoint.port == port_of(receiver)


def test_collector_pipelines_use_only_declared_components(services):
    config = collector_config(services)
    pipelines = config["service"]["pipelines"]
    assert {"traces", "logs"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config.get(kind, {}), f"{name} uses undeclared {component}"
    for extension in config["service"].get("extensions", []):
        assert extension in config.get("extensions", {})
