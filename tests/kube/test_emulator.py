"""
Self-test of the Kubernetes API emulator, speaking plain HTTP as kube-rs does.

    .venv/bin/python tests/kube/test_emulator.py

It starts ``emulator.py`` on a free port with the running Python (which needs
kmock, as the project's venv has), runs the checks in order against it, and
ends with the line ``N passed, M failed``; the exit code is 1 if any failed.
"""
import base64
import contextlib
import dataclasses
import json
import pathlib
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

EMULATOR = pathlib.Path(__file__).with_name('emulator.py')
NAMESPACE = 'faas'
CORE = f'/api/v1/namespaces/{NAMESPACE}'
APPS = f'/apis/apps/v1/namespaces/{NAMESPACE}'
SLICES = f'/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices'
APPLY = 'application/apply-patch+yaml'
MERGE = 'application/merge-patch+json'
FUNCTION = '''\
# /// script
# requires-python = ">=3.11"
# dependencies = []
# ///
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/exit":
            os._exit(3)
        body = f"{os.environ['GREETING']} from {os.environ['PORT']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
'''

Object = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: int, status: Object) -> None:
        super().__init__(f'{code}: {status}')
        self.code, self.status = code, status


class Api:
    """A bare JSON client of the emulator."""

    def __init__(self, port: int) -> None:
        self.base = f'http://127.0.0.1:{port}'

    def request(self, method: str, path: str, body: Object | None = None,
                content_type: str = 'application/json', **params: str) -> Object:
        url = f'{self.base}{path}?{urllib.parse.urlencode(params)}'
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data, {'Content-Type': content_type}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, json.load(e)) from None

    def get(self, path: str, **params: str) -> Object:
        return self.request('GET', path, **params)

    def text(self, path: str, **params: str) -> str:
        with urllib.request.urlopen(f'{self.base}{path}?{urllib.parse.urlencode(params)}', timeout=10) as response:
            return response.read().decode()

    def apply(self, path: str, body: Object) -> Object:
        return self.request('PATCH', path, body, APPLY, fieldManager='test', force='true')

    def watch(self, path: str, **params: str) -> Iterator[Object]:
        """The events of a watch, until it ends (or 30 s pass without one)."""
        query = urllib.parse.urlencode({'watch': 'true', **params})
        with urllib.request.urlopen(f'{self.base}{path}?{query}', timeout=30) as response:
            for line in response:
                yield json.loads(line)


@dataclasses.dataclass
class Emulator:
    """The running emulator under test."""
    api: Api
    workdir: pathlib.Path
    process: subprocess.Popen[str]


def expect_error(code: int, reason: str, call: Callable[[], Object]) -> None:
    try:
        call()
    except ApiError as e:
        assert (e.code, e.status['kind'], e.status['reason']) == (code, 'Status', reason), e
    else:
        raise AssertionError(f'expected {code} {reason}')


def revision(obj: Object) -> int:
    return int(obj['metadata']['resourceVersion'])


def eventually(check: Callable[[], Any], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f'timed out waiting for {check}'
        time.sleep(0.1)
    return result


def accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(('127.0.0.1', port), timeout=1):
        return True
    return False


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> Object:
    return {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': name, 'labels': labels or {}}, 'data': data}


def function_objects(fid: str, service: str) -> list[tuple[str, Object]]:
    """What the gateway creates for a function: ConfigMap, Secret, Deployment and Service."""
    template = {
        'metadata': {'labels': {'app': f'app-{fid}'}},
        'spec': {
            'containers': [{
                'name': 'function', 'image': 'python', 'command': ['uv', 'run', '--script', '/scripts/main.py'],
                'env': [{'name': 'PORT', 'value': '8000'}],
                'envFrom': [{'secretRef': {'name': f'secret-{fid}'}}],
                'readinessProbe': {'httpGet': {'path': '/health', 'port': 8000}},
                'volumeMounts': [{'name': 'scripts', 'mountPath': '/scripts'}],
            }],
            'volumes': [{'name': 'scripts', 'configMap': {'name': f'configmap-{fid}'}}],
        },
    }
    return [
        (f'{CORE}/configmaps/configmap-{fid}', configmap(f'configmap-{fid}', **{'main.py': FUNCTION})),
        (f'{CORE}/secrets/secret-{fid}', {
            'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': f'secret-{fid}'},
            'stringData': {'GREETING': 'hello'}}),
        (f'{APPS}/deployments/deployment-{fid}', {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': f'deployment-{fid}', 'labels': {'poorman-faas.io/managed': 'true'}},
            'spec': {'replicas': 1, 'selector': {'matchLabels': {'app': f'app-{fid}'}}, 'template': template}}),
        (f'{CORE}/services/{service}', {
            'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': service},
            'spec': {'selector': {'app': f'app-{fid}'}, 'ports': [{'port': 80, 'targetPort': 8000}]}}),
    ]


def next_slice_event(events: Iterator[Object], kind: str) -> Object:
    return next(event for event in events if event['type'] == kind)['object']


def slice_port(endpoint_slice: Object) -> int:
    assert endpoint_slice['endpoints'][0]['conditions']['ready'] is True
    return endpoint_slice['ports'][0]['port']


# --- the checks, in order ----------------------------------------------------------------------

def test_discovery(emulator: Emulator) -> None:
    api = emulator.api
    assert api.get('/version')['major'] == '1'
    assert 'deployments/scale' in {r['name'] for r in api.get('/apis/apps/v1')['resources']}
    expect_error(404, 'NotFound', lambda: api.get(f'{CORE}/nonsense'))


def test_writes_and_errors(emulator: Emulator) -> None:
    api = emulator.api
    created = api.request('POST', f'{CORE}/configmaps', configmap('crud', a='1'))
    meta = created['metadata']
    assert (created['kind'], meta['namespace'], meta['generation']) == ('ConfigMap', NAMESPACE, 1)
    assert meta['uid'] and meta['creationTimestamp']
    expect_error(409, 'AlreadyExists', lambda: api.request('POST', f'{CORE}/configmaps', configmap('crud')))
    patched = api.request('PATCH', f'{CORE}/configmaps/crud', {'data': {'b': '2'}}, MERGE)
    assert patched['data'] == {'a': '1', 'b': '2'} and revision(patched) > revision(created)
    stale = dict(configmap('crud', c='3'), metadata={'name': 'crud', 'resourceVersion': str(revision(created))})
    expect_error(409, 'Conflict', lambda: api.request('PUT', f'{CORE}/configmaps/crud', stale))
    replaced = api.request('PUT', f'{CORE}/configmaps/crud', configmap('crud', c='3'))
    assert replaced['data'] == {'c': '3'} and revision(replaced) > revision(patched)
    assert api.get(f'{CORE}/configmaps/crud') == replaced
    deleted = api.request('DELETE', f'{CORE}/configmaps/crud', {'propagationPolicy': 'Background'})
    assert deleted['metadata']['name'] == 'crud' and revision(deleted) > revision(replaced)
    expect_error(404, 'NotFound', lambda: api.get(f'{CORE}/configmaps/crud'))
    expect_error(404, 'NotFound', lambda: api.request('PATCH', f'{CORE}/configmaps/crud', {}, MERGE))
    expect_error(404, 'NotFound', lambda: api.request('DELETE', f'{CORE}/configmaps/crud'))


def test_apply_creates_and_bumps_generation(emulator: Emulator) -> None:
    api = emulator.api
    path = f'{APPS}/deployments/applied'
    body = {'apiVersion': 'apps/v1', 'kind': 'Deployment', 'metadata': {'name': 'applied'},
            'spec': {'replicas': 2, 'template': {'metadata': {'labels': {'app': 'x'}}}}}
    created = api.apply(path, body)
    assert created['metadata']['generation'] == 1 and created['spec']['replicas'] == 2
    relabelled = api.apply(path, dict(body, metadata={'name': 'applied', 'labels': {'k': 'v'}}))
    assert relabelled['metadata']['generation'] == 1
    respecced = api.apply(path, dict(body, spec={'replicas': 3}, status={'replicas': 9}))
    assert respecced['metadata']['generation'] == 2 and 'status' not in respecced
    assert respecced['spec']['template'] == body['spec']['template']  # merged, not replaced
    api.request('DELETE', path)


def test_selectors(emulator: Emulator) -> None:
    api = emulator.api
    for name, labels in [('sel-a', {'tier': 'web', 'env': 'prod'}), ('sel-b', {'tier': 'db'}), ('sel-c', {})]:
        api.apply(f'{CORE}/configmaps/{name}', configmap(name, labels))

    def names(**params: str) -> list[str]:
        found = api.get(f'{CORE}/configmaps', **params)
        assert found['kind'] == 'ConfigMapList' and found['metadata']['resourceVersion']
        return [item['metadata']['name'] for item in found['items'] if item['metadata']['name'].startswith('sel-')]

    assert names() == ['sel-a', 'sel-b', 'sel-c']
    assert names(labelSelector='tier') == ['sel-a', 'sel-b']
    assert names(labelSelector='!tier') == ['sel-c']
    assert names(labelSelector='tier=web') == names(labelSelector='tier==web') == ['sel-a']
    assert names(labelSelector='tier!=web') == ['sel-b', 'sel-c']
    assert names(labelSelector='tier,env=prod') == ['sel-a']
    assert names(labelSelector='tier in (db, cache)') == ['sel-b']
    assert names(labelSelector='tier notin (db)') == ['sel-a', 'sel-c']
    assert names(fieldSelector='metadata.name=sel-b') == ['sel-b']
    expect_error(400, 'BadRequest', lambda: api.get(f'{CORE}/configmaps', labelSelector='tier in db'))
    api.request('DELETE', f'{CORE}/configmaps', labelSelector='tier')
    assert names() == ['sel-c']


def test_watch(emulator: Emulator) -> None:
    api = emulator.api
    since = api.get(f'{CORE}/configmaps')['metadata']['resourceVersion']
    api.apply(f'{CORE}/configmaps/w', configmap('w', {'watched': 'yes'}, v='1'))
    api.apply(f'{CORE}/configmaps/w', configmap('w', {'watched': 'yes'}, v='2'))
    api.apply(f'{CORE}/configmaps/other', configmap('other'))
    api.apply(f'{CORE}/configmaps/w', configmap('w', {'watched': 'no'}, v='3'))
    started = time.monotonic()
    events = list(api.watch(f'{CORE}/configmaps', resourceVersion=since, labelSelector='watched=yes',
                            allowWatchBookmarks='true', timeoutSeconds='1'))
    assert 1 <= time.monotonic() - started < 5
    assert [e['type'] for e in events] == ['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK']
    assert [e['object']['data']['v'] for e in events[:3]] == ['1', '2', '3']
    revisions = [revision(e['object']) for e in events]
    assert int(since) < revisions[0] < revisions[1] < revisions[2] <= revisions[3]
    initial = list(api.watch(f'{CORE}/configmaps', resourceVersion='0', fieldSelector='metadata.name=w',
                             timeoutSeconds='1'))
    assert [(e['type'], e['object']['metadata']['name']) for e in initial] == [('ADDED', 'w')]


def test_function_lifecycle(emulator: Emulator) -> None:
    api = emulator.api
    for path, body in function_objects('t1', 'hello'):
        api.apply(path, body)
    assert api.get(f'{CORE}/secrets/secret-t1')['data'] == {'GREETING': base64.b64encode(b'hello').decode()}
    listed = api.get(SLICES, labelSelector='kubernetes.io/service-name=hello')
    assert listed['items'] == []
    events = api.watch(SLICES, labelSelector='kubernetes.io/service-name=hello',
                       resourceVersion=listed['metadata']['resourceVersion'], timeoutSeconds='60')
    first = next_slice_event(events, 'ADDED')
    port = slice_port(first)
    with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=10) as response:
        assert response.read().decode() == f'hello from {port}'
    deployment = f'{APPS}/deployments/deployment-t1'
    eventually(lambda: (api.get(deployment).get('status') or {}).get('readyReplicas') == 1)
    pods = api.get(f'{CORE}/pods', labelSelector='app=app-t1')['items']
    assert len(pods) == 1 and pods[0]['metadata']['name'].startswith('deployment-t1-r')
    log = eventually(lambda: api.text(f'{CORE}/pods/{pods[0]["metadata"]["name"]}/log', tailLines='1'))
    assert log.count('\n') == 1 and '"GET / HTTP/1.1" 200' in log

    # A new pod template rolls: the new replica is published before the old one goes.
    template_annotation = {'spec': {'template': {'metadata': {'annotations': {'rollout': '2'}}}}}
    rolled = api.request('PATCH', deployment, template_annotation, MERGE)
    assert rolled['metadata']['generation'] == 2
    second = next_slice_event(events, 'ADDED')
    assert next_slice_event(events, 'DELETED')['metadata']['name'] == first['metadata']['name']
    eventually(lambda: not accepts_connections(port))

    scale = api.get(f'{deployment}/scale')
    assert (scale['kind'], scale['spec']['replicas'], scale['status']['selector']) == ('Scale', 1, 'app=app-t1')
    since = api.get(deployment)['metadata']['resourceVersion']
    scaled = api.request('PATCH', f'{deployment}/scale', {'spec': {'replicas': 0}}, MERGE)
    assert scaled['spec']['replicas'] == 0
    assert next_slice_event(events, 'DELETED')['metadata']['name'] == second['metadata']['name']
    eventually(lambda: not accepts_connections(slice_port(second)))
    changes = api.watch(deployment.rsplit('/', 1)[0], resourceVersion=since, timeoutSeconds='5')
    modified = next(event for event in changes if event['object']['spec']['replicas'] == 0)
    assert modified['type'] == 'MODIFIED' and revision(modified['object']) > int(since)


def test_exited_replica_restarts(emulator: Emulator) -> None:
    api = emulator.api
    listed = api.get(SLICES, labelSelector='kubernetes.io/service-name=hello')
    assert listed['items'] == []
    events = api.watch(SLICES, labelSelector='kubernetes.io/service-name=hello',
                       resourceVersion=listed['metadata']['resourceVersion'], timeoutSeconds='60')
    api.request('PUT', f'{APPS}/deployments/deployment-t1/scale', {'spec': {'replicas': 1}})
    first = next_slice_event(events, 'ADDED')
    with contextlib.suppress(OSError):
        urllib.request.urlopen(f'http://127.0.0.1:{slice_port(first)}/exit', timeout=5)
    assert next_slice_event(events, 'DELETED')['metadata']['name'] == first['metadata']['name']
    second = next_slice_event(events, 'ADDED')
    assert second['metadata']['name'] != first['metadata']['name']
    assert accepts_connections(slice_port(second))


def test_stop_kills_functions(emulator: Emulator) -> None:
    slices = emulator.api.get(SLICES, labelSelector='kubernetes.io/service-name=hello')['items']
    port = slice_port(slices[0])
    assert accepts_connections(port)
    emulator.process.send_signal(signal.SIGTERM)
    assert emulator.process.wait(timeout=15) == 0
    assert not accepts_connections(port)


# --- the runner --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_emulator(workdir: pathlib.Path) -> Iterator[Emulator]:
    port = free_port()
    with open(workdir / 'emulator.log', 'w') as log:
        process = subprocess.Popen([sys.executable, str(EMULATOR), '--port', str(port), '--workdir', str(workdir)],
                                   stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert select.select([process.stdout], [], [], 30)[0], 'the emulator did not start in 30 s'
        assert process.stdout.readline() == f'READY {port}\n', 'the emulator failed to start'
        yield Emulator(Api(port), workdir, process)
    finally:
        process.terminate()
        process.wait(timeout=15)


def main() -> int:
    checks = [test_discovery, test_writes_and_errors, test_apply_creates_and_bumps_generation, test_selectors,
              test_watch, test_function_lifecycle, test_exited_replica_restarts, test_stop_kills_functions]
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix='test-emulator-') as tmp, running_emulator(pathlib.Path(tmp)) as emulator:
        for check in checks:
            try:
                check(emulator)
            except Exception:
                failed += 1
                print(f'FAILED {check.__name__}\n{traceback.format_exc()}', flush=True)
            else:
                passed += 1
                print(f'ok {check.__name__}', flush=True)
        if failed:
            print((emulator.workdir / 'emulator.log').read_text()[-5000:])
    print(f'{passed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
