"""Every target keeps idle connections longer than the load balancer, so no 502 from a race.

The load balancer reuses its connections to a target until they have been idle for its
idle timeout. A target that closes an idle connection first can do so just as the load
balancer sends a request on it, and the viewer gets a 502 (ELB guide, "Connection idle
timeout": the application's keep-alive must exceed the load balancer's idle timeout).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.instance.test_instance_bootstrap import exec_start
from tests.support import props

# Made the way streaming/index.js makes its server (Mastodon 4.3+: an ES module doing
# `import http from 'node:http'` and `http.createServer()` with no options), reporting
# what Node would keep.
STREAMING_LIKE_SERVER = """
import http from 'node:http';
const server = http.createServer();
console.log(JSON.stringify({keepAlive: server.keepAliveTimeout, headers: server.headersTimeout}));
"""


def idle_timeout(template: dict) -> int:
    attributes = props(template, "LoadBalancer")["LoadBalancerAttributes"]
    return int(next(a["Value"] for a in attributes if a["Key"] == "idle_timeout.timeout_seconds"))


def stack_env_value(template: dict, launch_template: str, key: str) -> str:
    """A literal value the launch template's user data writes into stack.env."""
    parts = props(template, launch_template)["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    text = "".join(p if isinstance(p, str) else "<resolved>" for p in parts)
    return re.search(rf"\n{key}='([^']*)'\n", text).group(1)


def option(command: str, flag: str, name: str) -> str:
    """The value of `-e NAME=value` (or another flag) in a docker run command."""
    return re.search(rf"{flag} {re.escape(name)}=(\S+)", command).group(1)


def streaming_keep_alive(run, command: str) -> dict:
    """Run Node with the streaming unit's NODE_OPTIONS, the module mounted where the unit mounts it."""
    module = option(command, "-e", "NODE_OPTIONS").removeprefix("--require=")
    host, mode = re.search(rf"-v (\S+):{re.escape(module)}:(\w+)", command).groups()
    assert mode == "ro"
    script = run.root / "streaming-like.mjs"
    script.write_text(STREAMING_LIKE_SERVER)
    env = {"PATH": "/usr/bin:/bin", "NODE_OPTIONS": f"--require={run.file(host)}",
           "MASTODON_KEEP_ALIVE_SECONDS": option(command, "-e", "MASTODON_KEEP_ALIVE_SECONDS")}
    node = subprocess.run([shutil.which("node"), str(script)], env=env, capture_output=True, text=True,
                          timeout=30, check=True)
    return json.loads(node.stdout)


def test_every_target_keeps_idle_connections_longer_than_the_load_balancer(template, bootstrap):
    idle = idle_timeout(template)
    # The one number the template hands the servers, as their user data writes it.
    keep_alive = stack_env_value(template, "WebLaunchTemplate", "TARGET_KEEP_ALIVE_SECONDS")
    run = bootstrap("web", stack={"TARGET_KEEP_ALIVE_SECONDS": keep_alive})
    assert run.returncode == 0, run.output

    # Puma: config/puma.rb sets persistent_timeout from PERSISTENT_TIMEOUT (default 20 s).
    puma = exec_start(run.unit("mastodon-web"))
    assert int(option(puma, "-e", "PERSISTENT_TIMEOUT")) > idle

    # Streaming: no setting of its own; the module NODE_OPTIONS preloads sets it.
    streaming = exec_start(run.unit("mastodon-streaming"))
    assert int(option(streaming, "-e", "MASTODON_KEEP_ALIVE_SECONDS")) > idle
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the preloaded module was not run")
    node = streaming_keep_alive(run, streaming)
    assert node["keepAlive"] > idle * 1000
    assert node["headers"] > node["keepAlive"], "Node must not time out a reused connection's headers first"


# Serves one keep-alive request, then reports whether the idle connection is still open
# after `wait` ms: Node's default (5 s) closes it about five seconds after the response.
IDLE_CONNECTION = """
import http from 'node:http';
import net from 'node:net';
const wait = Number(process.argv[2]);
const server = http.createServer((req, res) => res.end('ok'));
server.listen(0, '127.0.0.1', () => {
  let closed = false;
  const socket = net.connect(server.address().port, '127.0.0.1',
    () => socket.write('GET /api/v1/streaming/health HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n'));
  socket.on('data', () => {});
  socket.on('close', () => { closed = true; });
  setTimeout(() => { console.log(closed ? 'closed' : 'open'); process.exit(0); }, wait);
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_streaming_servers_idle_connections_really_outlive_nodes_default(web_run, tmp_path):
    script = tmp_path / "idle.mjs"
    script.write_text(IDLE_CONNECTION)
    module = web_run.file("/etc/mastodon/streaming-keep-alive.cjs")
    base = {"PATH": "/usr/bin:/bin"}
    # A short keep-alive for the test's sake: what matters is that the module's value rules.
    with_module = {**base, "NODE_OPTIONS": f"--require={module}", "MASTODON_KEEP_ALIVE_SECONDS": "12"}
    runs = [subprocess.Popen([shutil.which("node"), str(script), "7000"], env=env, stdout=subprocess.PIPE,
                             text=True) for env in (base, with_module)]
    default, kept = (process.communicate(timeout=30)[0].strip() for process in runs)
    assert default == "closed", "Node's own default no longer closes idle connections within 7 s"
    assert kept == "open"
