"""
A real Kubernetes API server for the gateway tests: kube-apiserver v1.20.2 with etcd 3.4, built
from Debian's packages by ``build-apiserver.sh`` (cached outside the checkout), RBAC on.

    python tests/kube/cluster.py --workdir DIR [--uv UV]

It starts etcd and kube-apiserver on free loopback ports, serves ``discovery.k8s.io/v1``
EndpointSlices through a CRD (1.20 has only v1beta1 built in), creates the namespace ``faas``
with the chart's ServiceAccount, Role and RoleBinding, and writes two kubeconfigs into DIR:
``admin.kubeconfig`` (system:masters, for the test's own reads) and ``gateway.kubeconfig``
(the user ``system:serviceaccount:faas:faas-gateway-sa``, bound only to the chart's Role). The
API server's audit log (every request, at Metadata level) is ``DIR/audit.log``.

There is no kubelet, scheduler or controller-manager: this script plays the Deployment and
EndpointSlice controllers and the kubelet for managed Deployments with the emulator's
:class:`emulator.Controller` (each replica a local ``uv run --script`` process, published as a
v1 EndpointSlice of the matching Service once ready), reading and writing the real server.

It prints ``READY <port>`` once everything is up and stops everything on SIGTERM/SIGINT.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import emulator  # noqa: E402  (the controllers this script reuses)

log = logging.getLogger('kube-cluster')
REPO = pathlib.Path(__file__).resolve().parents[2]
ADMIN_TOKEN = 'admin-token'
GATEWAY_TOKEN = 'gateway-token'
GATEWAY_USER = 'system:serviceaccount:faas:faas-gateway-sa'
NAMESPACE = 'faas'
KUBELET = 'test-kubelet'  # the field manager of what this script writes

ENDPOINTSLICE_CRD = {
    'apiVersion': 'apiextensions.k8s.io/v1',
    'kind': 'CustomResourceDefinition',
    'metadata': {'name': 'endpointslices.discovery.k8s.io',
                 'annotations': {'api-approved.kubernetes.io': 'unapproved, test only'}},
    'spec': {
        'group': 'discovery.k8s.io',
        'scope': 'Namespaced',
        'names': {'plural': 'endpointslices', 'singular': 'endpointslice', 'kind': 'EndpointSlice',
                  'listKind': 'EndpointSliceList'},
        'versions': [{'name': 'v1', 'served': True, 'storage': True,
                      'schema': {'openAPIV3Schema': {'type': 'object',
                                                     'x-kubernetes-preserve-unknown-fields': True}}}],
    },
}

AUDIT_POLICY = 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n'


def free_port() -> int:
    return emulator.free_port()


class Api:
    """The real API server as the emulator's controllers use their store: ``find`` and ``fetch``
    answer from a cache that :meth:`refresh` fills by listing; writes go to the server."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        self.cache: dict[emulator.kmock.resource, dict[tuple[str, str], dict]] = {}

    def request(self, method: str, path: str, body: dict | None = None,
                content_type: str = 'application/json') -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header('Authorization', f'Bearer {ADMIN_TOKEN}')
        req.add_header('User-Agent', KUBELET)
        if data is not None:
            req.add_header('Content-Type', content_type)
        try:
            with urllib.request.urlopen(req, context=self.tls, timeout=10) as resp:
                return resp.status, self.decode(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, self.decode(e.read())

    @staticmethod
    def decode(payload: bytes) -> dict:
        with contextlib.suppress(ValueError):
            return json.loads(payload or b'{}')
        return {'message': payload.decode(errors='replace')}

    @staticmethod
    def path(resource: emulator.kmock.resource, namespace: str | None, name: str | None = None) -> str:
        base = f'/api/{resource.version}' if not resource.group else f'/apis/{resource.group}/{resource.version}'
        if namespace:
            base += f'/namespaces/{namespace}'
        base += f'/{resource.plural}'
        return base + (f'/{name}' if name else '')

    async def refresh(self) -> None:
        for resource in (emulator.DEPLOYMENTS, emulator.CONFIGMAPS, emulator.SECRETS, emulator.SERVICES):
            status, body = await asyncio.to_thread(self.request, 'GET', self.path(resource, NAMESPACE))
            if status == 200:
                self.cache[resource] = {(o['metadata']['namespace'], o['metadata']['name']): o
                                        for o in body.get('items') or []}

    def find(self, resource, selected=lambda obj: True) -> list[dict]:
        return [o for o in self.cache.get(resource, {}).values() if selected(o)]

    def fetch(self, resource, namespace, name) -> dict | None:
        return self.cache.get(resource, {}).get((namespace, name))

    async def store(self, resource, body: dict) -> dict:
        body = dict(body)
        body.pop('status', None)
        meta = body['metadata']
        path = self.path(resource, meta['namespace'], meta['name']) + f'?fieldManager={KUBELET}&force=true'
        status, answer = await asyncio.to_thread(self.request, 'PATCH', path, body, 'application/apply-patch+yaml')
        if status >= 300:
            log.warning('storing %s %s: %s %s', resource.plural, meta['name'], status, answer.get('message'))
        return answer

    async def discard(self, resource, namespace, name) -> None:
        status, answer = await asyncio.to_thread(self.request, 'DELETE', self.path(resource, namespace, name))
        if status >= 300 and status != 404:
            log.warning('deleting %s %s: %s %s', resource.plural, name, status, answer.get('message'))

    async def set_status(self, resource, namespace, name, status_body: dict) -> None:
        path = self.path(resource, namespace, name) + '/status'
        await asyncio.to_thread(self.request, 'PATCH', path, {'status': status_body}, 'application/merge-patch+json')


def wait_until(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f'cluster.py: {what} not ready within {timeout} s')
        time.sleep(0.1)


def kubeconfig(server: str, token: str) -> str:
    return (f'apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {server}\n'
            f'    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {token}\n'
            f'contexts:\n- name: real\n  context:\n    cluster: real\n    user: u\n    namespace: {NAMESPACE}\n'
            f'current-context: real\n')


def start(workdir: pathlib.Path, processes: list[subprocess.Popen]) -> tuple[str, Api]:
    bins = pathlib.Path(subprocess.run([str(REPO / 'tests/kube/build-apiserver.sh')], check=True,
                                       capture_output=True, text=True).stdout.strip()) / 'bin'
    pki, certs = workdir / 'pki', workdir / 'certs'
    pki.mkdir(parents=True, exist_ok=True)
    certs.mkdir(exist_ok=True)
    subprocess.run(['openssl', 'genrsa', '-out', pki / 'sa.key', '2048'], check=True, capture_output=True)
    subprocess.run(['openssl', 'rsa', '-in', pki / 'sa.key', '-pubout', '-out', pki / 'sa.pub'],
                   check=True, capture_output=True)
    (pki / 'tokens.csv').write_text(f'{ADMIN_TOKEN},admin,admin-uid,system:masters\n'
                                    f'{GATEWAY_TOKEN},{GATEWAY_USER},gw-uid\n')
    (workdir / 'audit-policy.yaml').write_text(AUDIT_POLICY)
    client, peer, metrics, secure = free_port(), free_port(), free_port(), free_port()
    etcd_log = open(workdir / 'etcd.log', 'wb')
    processes.append(subprocess.Popen(
        [bins / 'etcd', '--name', 't', '--data-dir', workdir / 'etcd',
         '--listen-client-urls', f'http://127.0.0.1:{client}', '--advertise-client-urls', f'http://127.0.0.1:{client}',
         '--listen-peer-urls', f'http://127.0.0.1:{peer}', '--initial-advertise-peer-urls', f'http://127.0.0.1:{peer}',
         '--initial-cluster', f't=http://127.0.0.1:{peer}', '--listen-metrics-urls', f'http://127.0.0.1:{metrics}'],
        stdout=etcd_log, stderr=subprocess.STDOUT, start_new_session=True))

    def etcd_healthy() -> bool:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f'http://127.0.0.1:{client}/health', timeout=1) as r:
                return b'true' in r.read()
        return False
    wait_until('etcd', etcd_healthy)
    apiserver_log = open(workdir / 'apiserver.log', 'wb')
    processes.append(subprocess.Popen(
        [bins / 'kube-apiserver', f'--etcd-servers=http://127.0.0.1:{client}', '--bind-address=127.0.0.1',
         '--advertise-address=127.0.0.1', f'--secure-port={secure}', f'--cert-dir={certs}',
         f'--token-auth-file={pki / "tokens.csv"}', '--authorization-mode=RBAC',
         '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
         f'--service-account-key-file={pki / "sa.pub"}', f'--service-account-signing-key-file={pki / "sa.key"}',
         '--service-cluster-ip-range=10.96.0.0/24', '--runtime-config=discovery.k8s.io/v1beta1=false',
         f'--audit-policy-file={workdir / "audit-policy.yaml"}', f'--audit-log-path={workdir / "audit.log"}',
         '--audit-log-mode=blocking'],
        stdout=apiserver_log, stderr=subprocess.STDOUT, start_new_session=True))
    server = f'https://127.0.0.1:{secure}'
    api = Api(server)

    def ready() -> bool:
        with contextlib.suppress(OSError):
            status, _ = api.request('GET', '/readyz')
            return status == 200
        return False
    wait_until('kube-apiserver', ready)
    (workdir / 'admin.kubeconfig').write_text(kubeconfig(server, ADMIN_TOKEN))
    (workdir / 'gateway.kubeconfig').write_text(kubeconfig(server, GATEWAY_TOKEN))

    def create(path: str, body: dict) -> None:
        status, answer = api.request('POST', path, body)
        if status >= 300:
            raise SystemExit(f'cluster.py: creating {path}: {status} {answer.get("message")}')
    create('/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace', 'metadata': {'name': NAMESPACE}})
    # No controller-manager makes the namespace's default ServiceAccount, which Pods need.
    create(f'/api/v1/namespaces/{NAMESPACE}/serviceaccounts',
           {'apiVersion': 'v1', 'kind': 'ServiceAccount', 'metadata': {'name': 'default'}})
    create('/apis/apiextensions.k8s.io/v1/customresourcedefinitions', ENDPOINTSLICE_CRD)
    # The chart's ServiceAccount, Role and RoleBinding, as helm renders them.
    helm = str(REPO / '.venv/bin/helm') if (REPO / '.venv/bin/helm').exists() else 'helm'
    rbac = subprocess.run([helm, 'template', 'faas', str(REPO / 'charts/poorman-faas'), '--namespace', NAMESPACE,
                           '--show-only', 'templates/serviceaccount.yaml', '--show-only', 'templates/role.yaml',
                           '--show-only', 'templates/rolebinding.yaml'],
                          check=True, capture_output=True, text=True).stdout
    plural = {'ServiceAccount': '/api/v1/namespaces/{}/serviceaccounts',
              'Role': '/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles',
              'RoleBinding': '/apis/rbac.authorization.k8s.io/v1/namespaces/{}/rolebindings'}
    for doc in yaml.safe_load_all(rbac):
        if doc:
            create(plural[doc['kind']].format(doc['metadata'].get('namespace', NAMESPACE)), doc)
    wait_until('the EndpointSlice CRD',
               lambda: api.request('GET', f'/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices')[0] == 200)
    return server, api


async def kubelet(api: Api, uv: str, workdir: pathlib.Path, stop: asyncio.Event) -> None:
    controller = emulator.Controller(api, uv, workdir)
    try:
        while not stop.is_set():
            await api.refresh()
            await controller.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.15)
    finally:
        await controller.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', type=pathlib.Path, required=True)
    parser.add_argument('--uv', default=emulator.default_uv())
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format='%(asctime)s kube-cluster %(levelname)s %(message)s')
    (args.workdir / 'logs').mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        server, api = start(args.workdir, processes)
        print(f'READY {server.rsplit(":", 1)[1]}', flush=True)

        async def run() -> None:
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
            await kubelet(api, args.uv, args.workdir, stop)
        asyncio.run(run())
    finally:
        for p in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    log.info('stopped')


if __name__ == '__main__':
    main()
