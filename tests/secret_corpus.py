"""Secret shapes the redactor must mask, and near-misses it must leave alone: one table for every test that puts
secrets somewhere (redact_text itself, argv lists, stored columns, results, config files, logs).

Every secret is built from distinct fragments (letters and digits no ordinary text holds), and a shape leaks
when any one of its fragments is seen: a half-masked password shows as its other half.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

# Planted beside the secrets, the same way, in every place a test searches: an empty search result means
# nothing leaked only when this marker is found there.
CONTROL = "plainMarker7q"


@dataclass(frozen=True)
class Shape:
    name: str
    text: str  # how the secret appears
    fragments: tuple[str, ...]  # any of these seen means the secret leaked
    own_line: bool = False  # recognised only on a line of its own (a configuration directive)
    argv: bool = False  # a command line: also checked as an argv list (shlex.split)
    multiline: bool = False
    # Its value holds a space, so joined back into one line (ps, echo) where the value ends cannot be told:
    # `--password a b` may be a password and an argument. Checked quoted and as an argv list only.
    spaced_value: bool = False

    def leaked(self, text: str) -> list[str]:
        return [fragment for fragment in self.fragments if fragment in text]


def _f(n: int, length: int = 10) -> str:
    """A distinct fragment: letters and digits, no stem of a secret name in it."""
    return (f"Zq{n:03d}x" + "K7wVb9Rm3TnYh2Lj5Dc8Gf4Xs6" * 4)[:length]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _pem(label: str, n: int, end: str | None = None) -> Shape:
    body = f"MIIEowIBAAKCAQEA{_f(n, 24)}"
    end_line = f"-----END {end or label}-----"
    text = f"-----BEGIN {label}-----\n{body}\n{_f(n + 500, 24)}==\n{end_line}"
    return Shape(f"pem {label} ending {end or label}", text, (_f(n, 24), _f(n + 500, 24)), multiline=True)


def _cmd(name: str, n: int, template: str) -> Shape:
    secret = _f(n)
    return Shape(name, template.format(s=secret), (secret,), argv=True)


def _text(name: str, n: int, template: str, *, own_line: bool = False, length: int = 10) -> Shape:
    secret = _f(n, length)
    return Shape(name, template.format(s=secret), (secret,), own_line=own_line)


SHAPES: tuple[Shape, ...] = (
    # ---- private keys: every armour, cut short, mismatched, escaped in JSON, on one line, PuTTY --------------
    _pem("RSA PRIVATE KEY", 1),
    _pem("OPENSSH PRIVATE KEY", 2),
    _pem("EC PRIVATE KEY", 3),
    _pem("DSA PRIVATE KEY", 4),
    _pem("PRIVATE KEY", 5),
    _pem("ENCRYPTED PRIVATE KEY", 6),
    _pem("RSA PRIVATE KEY", 7, end="PRIVATE KEY"),
    _pem("PGP PRIVATE KEY BLOCK", 8),
    Shape(
        "pem with encryption headers",
        f"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{_f(9, 16)}\n\n"
        f"{_f(10, 40)}\n-----END RSA PRIVATE KEY-----",
        (_f(10, 40),),
        multiline=True,
    ),
    Shape(
        "pem cut before its END line",
        f"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA{_f(11, 30)}\n{_f(12, 30)}",
        (_f(11, 30), _f(12, 30)),
        multiline=True,
    ),
    Shape(
        "pem escaped in JSON",
        '{"key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADAN'
        + _f(13, 30)
        + '\\n-----END PRIVATE KEY-----\\n"}',
        (_f(13, 30),),
    ),
    Shape(
        "pem on one line",
        f"-----BEGIN RSA PRIVATE KEY----- MIIEow{_f(14, 30)} -----END RSA PRIVATE KEY-----",
        (_f(14, 30),),
    ),
    Shape(
        "ssh2 encrypted key",
        f'---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: "k"\nP2/56wAAA{_f(15, 30)}\n'
        "---- END SSH2 ENCRYPTED PRIVATE KEY ----",
        (_f(15, 30),),
        multiline=True,
    ),
    Shape(
        "putty key",
        "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: k\nPublic-Lines: 2\n"
        f"AAAAC3NzaC1lZDI1NTE5AAAAIOx\nAAAAC3Nz\nPrivate-Lines: 1\nAAAAI{_f(16, 30)}\nPrivate-MAC: 5f6e{_f(17, 20)}",
        (_f(16, 30), _f(17, 20)),
        multiline=True,
    ),
    # ---- URLs --------------------------------------------------------------------------------------------------
    _text("url password", 20, "DATABASE_URL=postgres://app:{s}@db.internal:5432/app"),
    Shape(
        "url password holding / and @",
        f"git clone https://deploy:{_f(21)}/{_f(22)}@{_f(23)}@git.lab/repo.git",
        (_f(21), _f(22), _f(23)),
    ),
    _text("url password with an empty user", 24, "cache at redis://:{s}@cache:6379/0 is up"),
    _text("url password in JSON", 25, '{{"dsn": "mysql://root:{s}@127.0.0.1/db"}}'),
    Shape("url user that is a GitHub token", f"https://ghp_{_f(26, 36)}@github.com/o/r.git", (_f(26, 36),)),
    # ---- headers and bearer/basic credentials ------------------------------------------------------------------
    _text("bearer header", 30, "Authorization: Bearer {s}"),
    Shape("basic header", f"Authorization: Basic {_b64('alice:' + _f(31))}", (_b64("alice:" + _f(31)),)),
    Shape(
        "proxy basic header, lower case",
        f"proxy-authorization: basic {_b64('bob:' + _f(32))}",
        (_b64("bob:" + _f(32)),),
    ),
    Shape(
        "basic credentials in a log line",
        f"sent Basic {_b64('svc:' + _f(33))} upstream",
        (_b64("svc:" + _f(33)),),
    ),
    _text("token scheme header", 34, "Authorization: token {s}"),
    _text("bare authorization value in JSON", 35, '{{"Authorization": "{s}", "Accept": "x"}}'),
    _text(
        "digest header",
        36,
        'Authorization: Digest username="bob", realm="lab", nonce="abc", response="{s}"',
    ),
    _text(
        "aws4 signature header",
        37,
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature={s}",
    ),
    _text("x-api-key header", 38, "X-Api-Key: {s}"),
    _text("x-auth-token header", 39, "X-Auth-Token: {s}"),
    _cmd("curl with an Authorization header", 40, "curl -H 'Authorization: Bearer {s}' https://api.lab/v1"),
    Shape("jwt", f"token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{_f(41)}.sig{_f(42)}", (_f(41), _f(42))),
    # ---- tokens with a well-known prefix -----------------------------------------------------------------------
    Shape("github classic token", f"GH={'ghp_' + _f(43, 36)}", (_f(43, 36),)),
    Shape("github fine-grained token", f"github_pat_{_f(44, 82)}", (_f(44, 82),)),
    Shape("gitlab token", f"glpat-{_f(45, 20)}", (_f(45, 20),)),
    Shape("slack token", f"slack xoxb-1234567890-{_f(46, 24)}", (_f(46, 24),)),
    Shape("aws access key id", f"aws_access_key_id = AKIA{_f(47, 16).upper()}", (_f(47, 16).upper(),)),
    _text("aws secret access key", 48, "aws_secret_access_key = {s}", length=40),
    Shape("stripe secret key", f"sk_live_{_f(49, 24)}", (_f(49, 24),)),
    Shape("google api key", f"key AIza{_f(50, 35)}", (_f(50, 35),)),
    Shape("npm token", f"npm_{_f(51, 36)}", (_f(51, 36),)),
    Shape("openai project key", f"sk-proj-{_f(52, 40)}", (_f(52, 40),)),
    Shape("anthropic key", f"sk-ant-api03-{_f(53, 40)}", (_f(53, 40),)),
    Shape("hugging face token", f"hf_{_f(54, 34)}", (_f(54, 34),)),
    Shape("pypi token", f"pypi-AgEIcHlwaS5vcmc{_f(55, 50)}", (_f(55, 50),)),
    # ---- NAME=VALUE, NAME: VALUE, directives --------------------------------------------------------------------
    _text("env password", 60, "DB_PASSWORD={s}"),
    _text("env *_PASS", 61, "SMTP_PASS={s}"),
    _text("env *_PWD", 62, "MYSQL_PWD={s}"),
    _text("yaml *_pwd", 63, "oracle_pwd: {s}"),
    _text("exported api key", 64, "export API_KEY={s}"),
    _text("quoted yaml secret", 65, "secret_key: '{s}'"),
    _text("json password", 66, '{{"user": "bob", "password": "{s}"}}'),
    _text("camel-case keystorePass", 67, '<Connector keystorePass="{s}" port="8443"/>'),
    _text("form client secret", 68, "client_secret={s}&grant_type=client_credentials"),
    _text("access token in a query string", 69, "GET https://api.lab/v1?access_token={s}&page=2"),
    _cmd("mount options", 70, "mount -t cifs //nas/share /mnt -o username=bob,password={s},uid=1000"),
    _text("java system property", 71, "-Djavax.net.ssl.keyStorePassword={s}"),
    _text("ansible become pass", 72, "ansible_become_pass={s}"),
    _text("password directive", 73, "password {s}", own_line=True),
    _text("upper-case PASSWORD directive", 74, "PASSWORD {s}", own_line=True),
    _text("redis requirepass", 75, "requirepass {s}", own_line=True),
    _text("redis masterauth", 76, "masterauth {s}", own_line=True),
    _text("compose environment item", 77, "      - POSTGRES_PASSWORD={s}"),
    _text("systemd Environment", 78, 'Environment="SMTP_PASSWORD={s}"'),
    _cmd("PGPASSWORD before psql", 79, "PGPASSWORD={s} psql -h db -U app"),
    # ---- command lines -----------------------------------------------------------------------------------------
    _cmd("mysql -p glued", 80, "mysql -uroot -p{s} appdb"),
    _cmd("mysqldump by path", 81, "/usr/bin/mysqldump --single-transaction -u backup -p{s} --all-databases"),
    _cmd("mysql --password=", 82, "mysql --password={s} -h db"),
    _cmd("--password VALUE", 83, "app --password {s} --verbose"),
    _cmd("--db-password VALUE", 84, "backup --db-password {s} --out /srv"),
    _cmd("single-dash -password", 85, "influx -username admin -password {s}"),
    _cmd("curl -u user:pass", 86, "curl -sS -u admin:{s} https://nas/api"),
    _cmd("curl --user=user:pass", 87, "curl --user=admin:{s} https://nas"),
    _cmd("curl combined flags", 88, "curl -ku admin:{s} https://nas"),
    _cmd("redis-cli -a", 89, "redis-cli -h cache -a {s} ping"),
    _cmd("redis-cli --pass", 90, "redis-cli --user app --pass {s}"),
    _cmd("sshpass -p", 91, "sshpass -p {s} ssh backup@nas"),
    _cmd("sshpass -p glued", 92, "sshpass -p{s} rsync -a /srv nas:/srv"),
    _cmd("htpasswd -b", 93, "htpasswd -b /etc/nginx/.htpasswd admin {s}"),
    _cmd("htpasswd -nbB", 94, "htpasswd -nbB admin {s}"),
    _cmd("openssl -passin pass:", 95, "openssl rsa -in key.pem -passin pass:{s} -out plain.pem"),
    _cmd("openssl enc -k", 96, "openssl enc -aes-256-cbc -k {s} -in f -out f.enc"),
    _cmd("smbclient -U user%pass", 97, "smbclient //nas/share -U backup%{s}"),
    _cmd("ldapsearch -w", 98, "ldapsearch -x -D cn=admin,dc=lab -w {s} -b dc=lab"),
    _cmd("docker login -p", 99, "docker login -u ci -p {s} registry.lab:5000"),
    _cmd("keytool -storepass", 100, "keytool -importcert -keystore ks.jks -storepass {s} -file ca.pem"),
    _cmd("ssh-keygen -N", 101, "ssh-keygen -t ed25519 -N {s} -f /tmp/k"),
    _cmd("mongosh -p", 102, "mongosh --host db -u admin -p {s}"),
    _cmd("zip -P", 103, "zip -P {s} backup.zip db.sql"),
    _cmd("7z -p glued", 104, "7z a -p{s} backup.7z /data"),
    _cmd("ipmitool -P", 105, "ipmitool -I lanplus -H bmc -U admin -P {s} chassis status"),
    _cmd("snmpwalk community", 106, "snmpwalk -v2c -c {s} switch01 system"),
    _cmd("nmcli password", 107, "nmcli dev wifi connect HomeNet password {s}"),
    _cmd("xfreerdp /p:", 108, "xfreerdp /v:host /u:admin /p:{s}"),
    _cmd("--token VALUE", 109, "kubectl --token {s} get pods"),
    _cmd("wget --http-password=", 110, "wget --http-user=bob --http-password={s} https://nas/f"),
    _cmd("usermod -p hash", 111, "usermod -p '$6$rounds=5000$salt${s}' bob"),
    _cmd("mysql inside sh -c", 112, "sh -c \"mysql -uroot -p{s} -e 'show databases'\""),
    Shape(
        "quoted value with a space",
        f"app --password '{_f(113)} {_f(114)}' --verbose",
        (_f(113), _f(114)),
        argv=True,
        spaced_value=True,
    ),
)

# Ordinary text that looks a little like a secret and must come back unchanged: over-masking makes results
# useless.
NEAR_MISSES: tuple[str, ...] = (
    "monkey=1",
    "keyboard layout: us",
    "keyboard us",
    "KEYCLOAK_URL=https://kc.lab",
    "rsync --passive --progress src/ dst/",
    "password_file=/x",
    "POSTGRES_PASSWORD_FILE=/run/secrets/db",
    "key_path=/home/bob/.ssh/id_ed25519",
    "token_ttl=3600",
    "KEY_TYPE=rsa",
    "secret_name=db-password",
    "api_key_id=1234",
    "Password required",
    "Password: ",
    "password is wrong for user bob",
    "the token expired at noon",
    "password=",
    'password=""',
    "PWD=/home/bob",
    "OLDPWD=/tmp",
    "PASS_MAX_DAYS 99999",
    "PasswordAuthentication no",
    "cat: /etc/passwd: Permission denied",
    "proxy_pass http://backend;",
    "fastcgi_pass unix:/run/php/php-fpm.sock;",
    "mysql -p",
    "mysql -u root -p appdb",
    "mysql -p appdb",
    "ls -la /srv/secrets",
    "tar -a -cf backup.tar.gz /srv",
    "grep -a pattern file.bin",
    "redis-cli -h cache ping",
    "curl -u bob https://nas/api",
    "curl -k https://self-signed.lab",
    "ssh -p 2222 nas",
    "docker run -p 8080:80 nginx",
    "docker login --password-stdin registry.lab",
    "pg_dump --no-password appdb",
    "7z a -p backup.7z /data",
    "htpasswd /etc/nginx/.htpasswd admin",
    "ssh-keygen -t ed25519 -N '' -f /tmp/k",
    "openssl rsa -passin env:KEYPASS -in key.pem",
    "openssl rsa -passin file:/run/keypass -in key.pem",
    "openssl rsa -check -in key.pem",
    "https://example.org/path?page=2",
    "https://registry.npmjs.org/@types/node",
    "http://host:8080/path@v2",
    "https://bob@example.org/",
    "Basic authentication required",
    "The basic idea",
    "Authorization: denied",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n-----END PUBLIC KEY-----",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxdeadbeef bob@nas",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "desk-1234 task-56",
    "gh-pages branch",
    "export PATH=/usr/local/bin:/usr/bin",
    "mysqld --skip-grant-tables",
    "Bearer",
)


def command_argv(shape: Shape) -> list[str]:
    """A command-line shape as the argv a program would receive."""
    return shlex.split(shape.text)


def leaks(text: str, shapes: tuple[Shape, ...] = SHAPES) -> dict[str, list[str]]:
    """Shape name -> fragments of it found in `text` (empty: nothing leaked)."""
    return {shape.name: found for shape in shapes if (found := shape.leaked(text))}
