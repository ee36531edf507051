"""Pure configuration logic: path rules, the nginx/compose/systemd parsers' edge cases, diffs and risk on real
edits of the golden files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_server.commands import default_registry
from mcp_server.config_monitoring.diff import cosmetic, counts, unified_diff
from mcp_server.config_monitoring.risk import at_least, classify
from mcp_server.errors import InvalidParameter, ParseError
from mcp_server.parsers.config_compose import ComposeSyntaxError, parse_compose_file
from mcp_server.parsers.config_files import (
    ConfigFileParams,
    ConfigHashesParams,
    ConfigWatchParams,
    parse_config_file,
)
from mcp_server.parsers.config_nginx import NginxSyntaxError, parse_nginx
from mcp_server.parsers.config_paths import WatchPolicy, detect_kind
from mcp_server.parsers.config_systemd import SystemdSyntaxError, parse_systemd_unit
from mcp_server.tools.config import parse_since

GOLDEN = Path(__file__).parent / "golden" / "config_file"
REGISTRY = default_registry()


def golden_content(case: str) -> str:
    return str(json.loads((GOLDEN / f"{case}.json").read_text())["content"])


# ---- paths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/etc/shadow",
        "/etc/gshadow-",
        "/home/ann/.ssh/id_rsa",
        "/etc/ssl/private/site.pem",
        "/srv/tls/site.key",
        "/proc/self/environ",
        "/run/secrets/db_password",
        "/root/.docker/config.json",
        "/home/a/.pgpass",
    ],
)
def test_credential_stores_are_refused_by_path(path: str) -> None:
    assert "credential store" in (WatchPolicy().refusal(path, directory=None) or "")
    with pytest.raises(ValueError, match="credential store"):
        ConfigFileParams(path=path)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/opt/stacks/media/compose.yaml", "compose"),
        ("/srv/app/docker-compose.override.yml", "compose"),
        ("/etc/systemd/system/backup.timer", "systemd"),
        ("/etc/nginx/conf.d/site.conf", "nginx"),
        ("/mnt/user/appdata/swag/nginx/proxy-confs/plex.subdomain.conf", "nginx"),
        ("/etc/fstab", "file"),
    ],
)
def test_the_kind_of_a_file_is_judged_by_its_name_and_place(path: str, kind: str) -> None:
    assert detect_kind(path) == kind


def test_paths_reach_the_device_as_argv_words_never_inside_the_script() -> None:
    hostile = "/tmp/$(touch pwned)`id`;rm -rf ~ 'x'.conf"
    params = ConfigWatchParams(dirs=(hostile,))
    argv = REGISTRY.get("config_watch").render(params)
    assert argv[:2] == ["sh", "-c"] and argv[-1] == hostile and hostile not in argv[2]
    policy = WatchPolicy(allow=("/tmp/*",))
    argv = REGISTRY.get("config_hashes").render(ConfigHashesParams(files=(hostile,), policy=policy))
    assert argv[4:] == ["/tmp/*", "", "1", hostile] and hostile not in argv[2]


def test_since_takes_durations_and_iso_times() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2025, 5, 1, 12, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2025-04-30T00:00:00Z", now) == datetime(2025, 4, 30, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(InvalidParameter, match="neither a duration"):
        parse_since("last tuesday", now)


# ---- parsers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server { listen 80;", "never closed"),
        ("server { listen 80 }", "has no ';'"),
        ("}", "unexpected '}'"),
        ('server { return 200 "unterminated; }', "unterminated quote"),
    ],
)
def test_nginx_text_nginx_would_refuse_is_a_syntax_error_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(NginxSyntaxError, match=message):
        parse_nginx(text)


def test_nginx_upstream_blocks_nested_locations_and_auth_request_are_understood() -> None:
    config = parse_nginx(
        "http {\n upstream app { server 10.0.0.5:8080; server 10.0.0.6:8080 backup; }\n"
        " server {\n  listen 443 ssl http2; server_name app.example.com www.app.example.com;\n"
        "  ssl_certificate /etc/ssl/app.pem;\n  auth_request /auth;\n"
        "  location /api/ { proxy_pass http://app/; location /api/admin { deny all; } }\n"
        '  location = /health { return 200 "ok"; }\n }\n}\n'
    )
    [server] = config.servers
    assert config.upstream_blocks == {"app": ["10.0.0.5:8080", "10.0.0.6:8080 backup"]}
    assert server.server_names == ["app.example.com", "www.app.example.com"] and server.ssl
    assert [loc.path for loc in server.locations] == ["/api/", "/api/admin", "= /health"]
    assert server.locations[0].upstream == "app" and server.locations[0].auth == ["auth_request"]
    assert server.locations[1].auth == ["auth_request", "ip_rules"]


def test_compose_long_syntax_ports_volumes_and_depends_on_are_normalised() -> None:
    parsed = parse_compose_file(
        "services:\n  db:\n    image: postgres:16\n  app:\n    build: {context: ./app}\n"
        "    ports:\n      - {target: 80, published: 8080, protocol: udp, host_ip: 127.0.0.1}\n"
        "    volumes:\n      - {type: bind, source: ./data, target: /data, read_only: true}\n"
        "    depends_on:\n      db: {condition: service_healthy}\n    deploy:\n"
        "      restart_policy: {condition: on-failure}\n    healthcheck: {test: [CMD, true]}\n"
    )
    app = parsed.services[1]
    assert app.ports == ["127.0.0.1:8080:80/udp"] and app.volumes == ["./data:/data:ro"]
    assert (app.build, app.depends_on, app.restart, app.healthcheck) == ("./app", ["db"], "on-failure", True)


def test_text_that_is_not_a_compose_file_says_where_it_breaks() -> None:
    with pytest.raises(ComposeSyntaxError, match="line 4"):
        parse_compose_file("services:\n  web:\n  image: [unclosed\n")
    with pytest.raises(ComposeSyntaxError, match="mapping of service names"):
        parse_compose_file("services:\n  - web\n")


def test_systemd_continuations_resets_and_comments_follow_systemd() -> None:
    unit = parse_systemd_unit(
        "[Unit]\nAfter=network.target\nAfter=\nAfter=docker.service \\\n  network-online.target\n"
        "; a comment\n[Service]\nExecStart=/usr/bin/app \\\n  --flag\nEnvironment=TOKEN=***\n"
    )
    assert unit.after == ["docker.service", "network-online.target"]
    assert unit.exec_start == ["/usr/bin/app --flag"]
    with pytest.raises(SystemdSyntaxError, match="before any"):
        parse_systemd_unit("ExecStart=/bin/true\n")


def test_config_file_output_cut_short_is_a_parse_error_or_marked_inconsistent() -> None:
    text = (GOLDEN / "systemd_ssh_service.txt").read_text()
    params = ConfigFileParams.model_validate(
        json.loads((GOLDEN / "systemd_ssh_service.params.json").read_text())
    )
    assert parse_config_file(text[: len(text) - 40], params).consistent is False
    for cut in ("@@meta\0type\0file\0", "@@meta\0type\0", "@@meta\0type\0missing\0@@end\0more", ""):
        with pytest.raises(ParseError):
            parse_config_file(cut, params)


# ---- diff and risk on real edits --------------------------------------------------------------------------


def test_comment_and_whitespace_edits_are_low_risk() -> None:
    before = golden_content("nginx_swag_bitwarden")
    after = before.replace(
        "    client_max_body_size 128M;", "    # body limit\n    client_max_body_size   128M;  "
    )
    assert cosmetic("nginx", before, after)
    assessment = classify("nginx", "/x/bitwarden.subdomain.conf", "modified", before, after)
    assert (assessment.risk, assessment.reasons) == ("low", ["low: only comments or whitespace changed"])


def test_switching_on_authelia_in_a_swag_conf_is_a_high_risk_auth_change() -> None:
    before = golden_content("nginx_swag_bitwarden")
    after = before.replace(
        "        #include /config/nginx/authelia-location.conf;",
        "        include /config/nginx/authelia-location.conf;",
        1,
    )
    assessment = classify("nginx", "/x/bitwarden.subdomain.conf", "modified", before, after)
    assert assessment.risk == "high"
    assert any("authentication none -> authelia" in r for r in assessment.reasons)
    assert assessment.affected_services == ["bitwarden.*"]


def test_a_new_upstream_port_and_a_new_location_in_a_swag_conf() -> None:
    before = golden_content("nginx_swag_bitwarden")
    after = before.replace("set $upstream_port 3012;", "set $upstream_port 3013;").replace(
        "    location ~ (/bitwarden)?/api {",
        "    location /metrics { return 404; }\n\n    location ~ (/bitwarden)?/api {",
    )
    assessment = classify("nginx", "/x/bitwarden.subdomain.conf", "modified", before, after)
    assert assessment.risk == "high"
    assert any("bitwarden:3013" in r for r in assessment.reasons)
    assert "medium: server bitwarden.*: location /metrics added" in assessment.reasons


def test_compose_removed_service_image_bump_and_added_service() -> None:
    before = golden_content("compose_immich")
    after = before.replace("immich-server:${IMMICH_VERSION:-release}", "immich-server:v1.120.0").replace(
        "  redis:\n    container_name: immich_redis", "  cache:\n    container_name: immich_redis"
    )
    assessment = classify("compose", "/opt/stacks/immich/docker-compose.yml", "modified", before, after)
    assert assessment.risk == "high"
    assert "high: service redis removed" in assessment.reasons
    assert "medium: service cache added" in assessment.reasons
    assert any("immich-server:v1.120.0" in r for r in assessment.reasons)
    assert set(assessment.affected_services) == {"redis", "cache", "immich-server"}


def test_a_rotated_secret_is_a_medium_change_even_though_the_diff_shows_only_stars() -> None:
    content = golden_content("compose_nextcloud_env_list")
    assessment = classify("compose", "/c.yaml", "modified", content, content, hidden_change=True)
    assert assessment.risk == "medium" and "secret value changed" in assessment.reasons[0]


def test_a_restart_policy_change_is_medium_and_a_broken_file_is_high() -> None:
    before = golden_content("compose_nextcloud_env_list")
    restart = classify(
        "compose", "/c.yaml", "modified", before, before.replace("restart: always", "restart: no", 1)
    )
    assert restart.risk == "medium" and restart.affected_services == ["nc"]
    broken = classify("compose", "/c.yaml", "modified", before, before + "  oops: [\n")
    assert broken.risk == "high" and "not a valid compose file" in broken.reasons[0]


def test_systemd_execstart_and_user_changes_are_high_and_dependencies_medium() -> None:
    before = golden_content("systemd_ssh_service")
    exec_change = classify(
        "systemd",
        "/lib/systemd/system/ssh.service",
        "modified",
        before,
        before.replace("-D $SSHD_OPTS", "-D -p 2222"),
    )
    assert exec_change.risk == "high" and "high: [Service] ExecStart changed" in exec_change.reasons
    assert exec_change.affected_services == ["ssh.service"]
    deps = classify(
        "systemd",
        "/lib/systemd/system/ssh.service",
        "modified",
        before,
        before.replace("auditd.service", "auditd.service docker.service"),
    )
    assert deps.risk == "medium"


def test_unified_diff_marks_a_missing_final_newline_and_counts_lines() -> None:
    text = unified_diff("a\nb\n", "a\nc", "a/f", "b/f")
    assert "\\ No newline at end of file" in text
    assert counts(text) == (1, 1)
    assert at_least("medium") == ["medium", "high"]


def test_secrets_only_a_config_files_own_syntax_shows_are_redacted() -> None:
    from mcp_server.parsers.config_files import redact_config

    nginx = redact_config(
        "nginx",
        'location / {\n    proxy_set_header Authorization "Basic dXNlcjpwYXNz";\n'
        "    proxy_set_header X-Api-Key abc123;\n    proxy_set_header Host $host;\n"
        "    set $api_token s3cr3t;\n    set $upstream_app grafana;\n}\n",
    )
    assert 'Authorization "***";' in nginx and "X-Api-Key ***;" in nginx and "set $api_token ***;" in nginx
    assert "Host $host;" in nginx and "set $upstream_app grafana;" in nginx
    unit = redact_config(
        "systemd", '[Service]\nEnvironment="DB_PASSWORD=two words" "TZ=UTC" API_TOKEN=zz SECRET_KEY="a b"\n'
    )
    assert unit == '[Service]\nEnvironment="DB_PASSWORD=***" "TZ=UTC" API_TOKEN=*** SECRET_KEY="***"\n'
    assert parse_systemd_unit(unit).environment == [
        '"DB_PASSWORD=***" "TZ=UTC" API_TOKEN=*** SECRET_KEY="***"'
    ]
