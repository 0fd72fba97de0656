"""Running kubectl: on this machine, or on a control host over SSH (--kube-host).

Every call carries a request timeout, so a dead or hanging API server becomes a clear
"could not reach the cluster" instead of a command that never returns.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpunode.bootstrap.errors import HostStateError, TransientError, UserError

# What kubectl prints when it never got an answer it could use from the API server.
_UNREACHABLE = re.compile(
    r"Unable to connect to the server|connection refused|no such host|i/o timeout|"
    r"context deadline exceeded|Client\.Timeout|TLS handshake timeout|"
    r"the server was unable to return a response|The connection to the server .* was refused|"
    r"net/http: request canceled|EOF$",
    re.MULTILINE,
)
# RBAC's refusal, as the API server words it (not other 403s, such as a PodSecurity or quota
# admission refusal, which say why themselves).
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\w+) resource "(?P<resource>[^"]*)"'
    r'(?: in API group "(?P<group>[^"]*)")?(?: (?P<scope>at the cluster scope|in the namespace "[^"]*"))?'
)
# client-go's own log lines (`E1123 16:40:24.972700   15057 memcache.go:265] ...`), which kubectl
# prints once per retry before its one-line verdict.
_KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.-]+:\d+\] ")


def _without_klog(stderr: str) -> str:
    """kubectl's error without client-go's log lines; those alone when there is nothing else."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    kept = [line for line in lines if not _KLOG_LINE.match(line)]
    return "\n".join(kept or lines[-1:])


_NO_CONTEXT = re.compile(
    r'context was not found for specified context: (\S+)|context "([^"]+)" does not exist'
    r'|no context exists with the name: "?([^"\s]+)'
)
_UNAUTHORIZED = re.compile(
    r"You must be logged in to the server|provide credentials|Unauthorized|"
    r"certificate signed by unknown authority|x509:",
)


@dataclass(frozen=True)
class SshTarget:
    """A control host that has kubectl and a kubeconfig (--kube-host)."""

    host: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    config_file: str | None = None
    known_hosts: str | None = None

    def argv(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.config_file:
            argv += ["-F", self.config_file]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        argv.append(f"{self.user}@{self.host}" if self.user else self.host)
        return argv


@dataclass(frozen=True)
class KubeAccess:
    kubeconfig: str | None = None
    context: str | None = None
    kubectl: str = "kubectl"
    request_timeout: float = 15.0
    control_host: SshTarget | None = None

    def describe(self) -> str:
        where = f" on {self.control_host.host}" if self.control_host else ""
        config = f" (kubeconfig {self.kubeconfig})" if self.kubeconfig else ""
        context = f" context {self.context}" if self.context else ""
        return f"kubectl{where}{config}{context}".strip()


@dataclass
class KubectlResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class ClusterUnreachable(TransientError):
    """kubectl got no usable answer from the API server."""


class ClusterAuthError(UserError):
    """The API server refused our credentials."""


class KubectlError(HostStateError):
    """kubectl ran and the API server said no."""

    def __init__(self, problem: str, fix: str | None = None, *, result: KubectlResult | None = None) -> None:
        super().__init__(problem, fix)
        self.result = result


@dataclass
class Kubectl:
    access: KubeAccess = field(default_factory=KubeAccess)

    def _argv(self, args: Sequence[str], *, request_timeout: bool) -> list[str]:
        argv = [self.access.kubectl]
        if self.access.kubeconfig:
            argv += ["--kubeconfig", self.access.kubeconfig]
        if self.access.context:
            argv += ["--context", self.access.context]
        if request_timeout:
            argv.append(f"--request-timeout={int(self.access.request_timeout)}s")
        argv += list(args)
        if self.access.control_host is not None:
            return self.access.control_host.argv() + ["--", " ".join(shlex.quote(a) for a in argv)]
        return argv

    def run(
        self,
        *args: str,
        stdin: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        request_timeout: bool = True,
    ) -> KubectlResult:
        """Run kubectl; with `check`, a failure becomes the matching error."""
        if self.access.control_host is None and shutil.which(self.access.kubectl) is None:
            raise UserError(
                f"kubectl ({self.access.kubectl}) is not installed on this machine.",
                fix="install kubectl, pass --kubectl PATH, or run kubectl on a control host with --kube-host HOST",
            )
        argv = self._argv(args, request_timeout=request_timeout)
        limit = timeout if timeout is not None else self.access.request_timeout * 4 + 10
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterUnreachable(
                f"{self.access.describe()} did not finish `kubectl {' '.join(args)}` within {limit:.0f} s.",
                fix="check that the API server answers (kubectl cluster-info)",
            ) from exc
        result = KubectlResult(list(args), done.returncode, done.stdout, done.stderr)
        if check and not result.ok:
            raise self.error(result)
        return result

    def error(self, result: KubectlResult) -> Exception:
        message = _without_klog(result.stderr) or result.stdout.strip() or f"exit status {result.returncode}"
        command = "kubectl " + " ".join(result.args)
        if self.access.control_host is not None and result.returncode == 255:
            return ClusterUnreachable(
                f"could not run kubectl on {self.access.control_host.host} over SSH: {message}",
                fix="check --kube-host and the SSH options",
            )
        context = _NO_CONTEXT.search(message)
        if context:
            name = next(group for group in context.groups() if group)
            return UserError(
                f"the kubeconfig has no context {name!r} (`{command}`: {message}).",
                fix="pass a --context that `kubectl config get-contexts` lists, or leave --context out",
            )
        if _UNAUTHORIZED.search(message):
            return ClusterAuthError(
                f"the API server refused {self.access.describe()}'s credentials: {message}",
                fix="check the kubeconfig and context (kubectl auth whoami)",
            )
        forbidden = _FORBIDDEN.search(message)
        if forbidden:
            what = forbidden["resource"] + (f".{forbidden['group']}" if forbidden["group"] else "")
            scope = f" {forbidden['scope']}" if forbidden["scope"] else ""
            return ClusterAuthError(
                f"{self.access.describe()} may not {forbidden['verb']} {what}{scope} (`{command}`): {message}",
                fix=f'grant {forbidden["user"]} "{forbidden["verb"]}" on {what}{scope} (a Role or ClusterRole '
                'and its binding), or use a kubeconfig that has it; the README\'s "Permissions" lists '
                "what each command needs",
            )
        if _UNREACHABLE.search(message):
            return ClusterUnreachable(
                f"could not reach the cluster with {self.access.describe()}: {message}",
                fix="check the kubeconfig and that the API server answers (kubectl cluster-info)",
            )
        return KubectlError(f"`{command}` failed: {message}", result=result)

    # -- reading --------------------------------------------------------------------------

    def get(self, kind: str, name: str, *, namespace: str | None = None) -> dict[str, Any] | None:
        """One object as JSON, or None when it does not exist."""
        args = ["get", kind, name, "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        result = self.run(*args, check=False)
        if not result.ok:
            if "(NotFound)" in result.stderr:
                return None
            raise self.error(result)
        return _json(result)

    def list(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        if all_namespaces:
            args.append("--all-namespaces")
        elif namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        if field_selector:
            args += ["--field-selector", field_selector]
        items = _json(self.run(*args)).get("items", [])
        return [item for item in items if isinstance(item, dict)]

    def api_resources(self) -> set[str]:
        """`<resource>.<group>` of every resource the server serves (for optional CRDs)."""
        result = self.run("api-resources", "-o", "name")
        return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def _json(result: KubectlResult) -> dict[str, Any]:
    try:
        data = json.loads(result.stdout)
    except ValueError as exc:
        raise KubectlError(
            f"`kubectl {' '.join(result.args)}` printed no JSON: {result.stdout[:200]!r}", result=result
        ) from exc
    if not isinstance(data, dict):
        raise KubectlError(f"`kubectl {' '.join(result.args)}` printed unexpected JSON", result=result)
    return data
