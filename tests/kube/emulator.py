"""
A Kubernetes API emulator for the tests of the gateway's Kubernetes runtime.

    python tests/kube/emulator.py --port PORT [--host 127.0.0.1] [--uv UV] [--workdir DIR]

It prints ``READY <port>`` once it serves, logs to stderr, and stops on
SIGTERM/SIGINT together with every process it started.

The API is kmock's in-memory ``KubernetesEmulator``: its HTTP server, request
parsing (path to resource/namespace/name/subresource, method to action),
reaction routing, discovery documents (from kmock's bundled resource list),
object store (``objects``) and event buses. :class:`Emulator` adds what kube-rs
relies on and kmock lacks: resourceVersions and the other server-set metadata,
List kinds, label and field selectors, watches that resume from a
resourceVersion and end after timeoutSeconds, PUT, server-side apply that
creates, the ``deployments/{name}/scale`` and ``pods/{name}/log``
subresources, Status errors with Kubernetes' reasons.

:class:`Controller` plays the cluster's controllers and kubelet for the
Deployments labelled ``poorman-faas.io/managed: "true"``: each replica is a
local ``uv run --script`` process of the ConfigMap's ``main.py`` (listed as a
Pod whose log is the process's output), published as an EndpointSlice of the
matching Service once it passes its readinessProbe (httpGet, or else a TCP
connection).
"""
import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import itertools
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import kmock

log = logging.getLogger('kube-emulator')

CONFIGMAPS = kmock.resource('', 'v1', 'configmaps')
SECRETS = kmock.resource('', 'v1', 'secrets')
PODS = kmock.resource('', 'v1', 'pods')
SERVICES = kmock.resource('', 'v1', 'services')
DEPLOYMENTS = kmock.resource('apps', 'v1', 'deployments')
ENDPOINTSLICES = kmock.resource('discovery.k8s.io', 'v1', 'endpointslices')

MANAGED_LABEL = 'poorman-faas.io/managed'
SERVICE_NAME_LABEL = 'kubernetes.io/service-name'
MANAGED_BY_LABEL = 'endpointslice.kubernetes.io/managed-by'
LOG_ANNOTATION = 'emulator.poorman-faas.io/log'  # the file a pod's log is read from

APPLY = 'application/apply-patch+yaml'
MERGE_PATCHES = {'application/merge-patch+json', 'application/strategic-merge-patch+json', APPLY}
HISTORY_SIZE = 10_000  # changes per resource that watches can resume from
DEFAULT_WATCH_SECONDS = 1800
RECONCILE_SECONDS = 0.1  # how often the controller probes ports and processes
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL

Object = dict[str, Any]
Predicate = Callable[[Object], bool]


def api_error(code: int, reason: str, message: str, resource: kmock.resource | None = None,
              name: str | None = None) -> kmock.KubernetesError:
    """An error that kmock renders as a Kubernetes ``Status`` with this code and reason."""
    details = {'name': name or '', 'group': resource.group if resource else '',
               'kind': resource.plural if resource else ''}
    return kmock.KubernetesError(code, reason, message, details)


def not_found(resource: kmock.resource, name: str) -> kmock.KubernetesError:
    return api_error(404, 'NotFound', f'{resource.plural} "{name}" not found', resource, name)


def api_version(resource: kmock.resource) -> str:
    return f'{resource.group}/{resource.version}' if resource.group else resource.version


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- selectors ---------------------------------------------------------------------------------

_LABEL_REQUIREMENT = re.compile(r"""
    \s*(?:
        !\s*(?P<absent>[\w./-]+)                                # !key
      | (?P<key>[\w./-]+)\s*(?:
            (?P<op>==|=|!=)\s*(?P<value>[\w./-]*)               # key=value, key==value, key!=value
          | \s(?P<set_op>in|notin)\s*\((?P<values>[^)]*)\)      # key in (a,b), key notin (a,b)
        )?                                                      # key
    )\s*(?:,|$)""", re.VERBOSE)


def label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector (equality- and set-based) into a predicate on labels."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    text, position = text.strip(), 0
    while position < len(text):
        match = _LABEL_REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f'unable to parse requirement: {text[position:]!r}')
        checks.append(_label_check(match))
        position = match.end()
    return lambda labels: all(check(labels) for check in checks)


def _label_check(match: re.Match[str]) -> Callable[[Mapping[str, str]], bool]:
    key, value = match['key'], match['value']
    values = {item.strip() for item in (match['values'] or '').split(',')}
    match match['absent'], match['op'], match['set_op']:
        case str(absent), _, _:
            return lambda labels: absent not in labels
        case _, '=' | '==', _:
            return lambda labels: labels.get(key) == value
        case _, '!=', _:
            return lambda labels: labels.get(key) != value
        case _, _, 'in':
            return lambda labels: labels.get(key) in values
        case _, _, 'notin':
            return lambda labels: labels.get(key) not in values
        case _:
            return lambda labels: key in labels


def field_selector(text: str) -> Predicate:
    """Compile a field selector (``metadata.name=x,spec.y!=z``) into a predicate on objects."""
    checks: list[tuple[list[str], bool, str]] = []
    for term in filter(None, (term.strip() for term in text.split(','))):
        match = re.fullmatch(r'([\w.]+)\s*(==|=|!=)\s*(.*)', term)
        if match is None:
            raise ValueError(f'invalid field selector: {term!r}')
        path, op, value = match.groups()
        checks.append((path.split('.'), op == '!=', value))
    return lambda obj: all((_field(obj, path) == value) != negated for path, negated, value in checks)


def _field(obj: Object, path: list[str]) -> str:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return '' if obj is None else str(obj)


# --- the API -----------------------------------------------------------------------------------

@attrs.frozen
class Change:
    """One write, as watches replay it: its type and the object after and before it."""
    type: str
    object: Object
    previous: Object | None

    @property
    def revision(self) -> int:
        return int(self.object['metadata']['resourceVersion'])

    def event(self, selected: Predicate) -> Object | None:
        """The event a watch with this selection sees: objects entering or leaving it are ADDED or DELETED."""
        now_in = selected(self.object)
        was_in = self.previous is not None and selected(self.previous)
        if self.type == 'MODIFIED' and now_in != was_in:
            return {'type': 'ADDED' if now_in else 'DELETED', 'object': self.object}
        return {'type': self.type, 'object': self.object} if now_in else None


@attrs.frozen
class WatchParams:
    since: int
    initial_events: bool
    bookmarks: bool
    seconds: float

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> 'WatchParams':
        return cls(since=int(params.get('resourceVersion') or 0),
                   initial_events=params.get('sendInitialEvents') == 'true',
                   bookmarks=params.get('allowWatchBookmarks') == 'true',
                   seconds=float(params.get('timeoutSeconds') or DEFAULT_WATCH_SECONDS))


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """
    kmock's emulator with the API semantics that kube-rs relies on.

    kmock's own write path (``KubernetesEmulator._handle``) stores request
    bodies verbatim and emits events without resourceVersions; here the
    reactions write instead, keeping kmock's object store and buses.
    """

    # Every request as `METHOD path?query content-type user-agent`, one per line: the tests
    # check the gateway's calls against the RBAC rules of its Helm chart.
    audit_log: pathlib.Path | None = None
    changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _revision: int = attrs.field(default=0, init=False)
    _history: dict[kmock.resource, collections.deque[Change]] = attrs.field(factory=dict, init=False)
    _forgotten: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # discovery, and the per-action fallbacks to the _serve_* below
        self.resources.load_bundled()  # kinds, and which resources exist at all
        scale = (self.fallback ** 3)[DEPLOYMENTS, kmock.subresource('scale')]
        scale[kmock.method.GET] << self._serve_scale
        scale[kmock.method.PUT] << self._serve_scale_update
        scale[kmock.method.PATCH] << self._serve_scale_update
        (self.fallback ** 3)[PODS, kmock.subresource('log'), kmock.method.GET] << self._serve_pod_log
        (self.fallback ** 2)[kmock.subresource(re.compile('.+'))] << self._serve_unknown_subresource
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[kmock.method.DELETE, kmock.name(None)] << self._serve_delete_collection

    # --- reading and writing, for the reactions and the controller

    def fetch(self, resource: kmock.resource, namespace: str | None, name: str) -> Object | None:
        """The stored object (never to be mutated), or None."""
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def find(self, resource: kmock.resource, selected: Predicate = lambda obj: True) -> list[Object]:
        """The stored objects (never to be mutated) that are selected, by namespace and name."""
        found = [(key, obj.raw) for key, obj in self.objects.items() if key[0] == resource and not obj.deleted]
        return [obj for key, obj in sorted(found, key=lambda item: (item[0][1] or '', item[0][2])) if selected(obj)]

    async def store(self, resource: kmock.resource, body: Object) -> Object:
        """Create or replace an object as it is, status included."""
        namespace, name = body['metadata'].get('namespace'), body['metadata']['name']
        async with self._lock:
            return await self._save(resource, namespace, name, body, self.fetch(resource, namespace, name))

    async def discard(self, resource: kmock.resource, namespace: str | None, name: str) -> None:
        async with self._lock:
            if (previous := self.fetch(resource, namespace, name)) is not None:
                await self._remove(resource, previous)

    async def set_status(self, resource: kmock.resource, namespace: str | None, name: str, status: Object) -> None:
        """Set the status of an object if it exists and the status differs."""
        async with self._lock:
            previous = self.fetch(resource, namespace, name)
            if previous is not None and previous.get('status') != status:
                await self._save(resource, namespace, name, dict(previous, status=status), previous)

    async def end_watches(self) -> None:
        for bus in list(self._buses.values()):
            await bus.put(None)

    async def _save(self, resource: kmock.resource, namespace: str | None, name: str,
                    body: Object, previous: Object | None) -> Object:
        """Store a new state of an object with its server-set metadata; announce it."""
        obj = copy.deepcopy(body)
        meta = obj.setdefault('metadata', {})
        meta.update({'name': name, 'namespace': namespace} if namespace else {'name': name})
        if previous is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        else:
            old = previous['metadata']
            meta.update(uid=old['uid'], creationTimestamp=old['creationTimestamp'],
                        generation=old['generation'] + (obj.get('spec') != previous.get('spec')))
        meta['resourceVersion'] = self._next_revision()
        obj.update(apiVersion=api_version(resource), kind=self.resources[resource].kind)
        key = (resource, namespace, name)
        if key in self.objects:
            self.objects[key].history.append(obj)
        else:
            self.objects[key] = obj
        await self._announce(resource, Change('ADDED' if previous is None else 'MODIFIED', obj, previous))
        return obj

    async def _remove(self, resource: kmock.resource, previous: Object) -> Object:
        """Delete an object; return its last state, at the deletion's resourceVersion."""
        obj = copy.deepcopy(previous)
        obj['metadata']['resourceVersion'] = self._next_revision()
        self.objects[resource, obj['metadata'].get('namespace'), obj['metadata']['name']].delete()
        await self._announce(resource, Change('DELETED', obj, previous))
        return obj

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _announce(self, resource: kmock.resource, change: Change) -> None:
        history = self._history.setdefault(resource, collections.deque(maxlen=HISTORY_SIZE))
        if len(history) == history.maxlen:
            self._forgotten[resource] = history[0].revision
        history.append(change)
        await self._buses[resource].put(change)
        self.changed.set()

    # --- kmock's request handling

    async def _handle(self, request: kmock.Request) -> Any:
        if self.audit_log is not None:
            content_type = request.headers.get('Content-Type', '-').split(';')[0]
            with self.audit_log.open('a') as f:
                agent = request.headers.get('User-Agent', '-').replace(' ', '_')
                f.write(f'{request.method.value} {request.url.path_qs} {content_type} {agent}\n')
        # Skip KubernetesEmulator._handle's own writes: the reactions below do them.
        try:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        except kmock.KubernetesError as e:
            log.info('%s %s: %s %s', request.method.value, request.url.path_qs, e.status, e.message)
            raise
        finally:
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        # kmock keeps every request for assertions, and its routing scans them all on each request:
        # kept, they make each request slower than the last (14 ms after 500 requests, 110 ms after 2000).
        self._requests.remove(request)
        for payload in self._payloads:
            if request in payload._requests:
                payload._requests.remove(request)

    async def _render_error(self, exc: Exception) -> Any:
        self.errors.remove(exc)  # kmock keeps them for assertions; here they are just responses
        if not isinstance(exc, kmock.KubernetesError):
            log.error('Internal error', exc_info=exc)
        return await super()._render_error(exc)

    # --- reactions

    async def _serve_fetch(self, request: kmock.Request) -> Object:
        return self._existing(request)

    async def _serve_list(self, request: kmock.Request) -> Object:
        resource = self._known(request)
        return self._list_of(resource, self.find(resource, self._selection(request)))

    async def _serve_watch(self, request: kmock.Request) -> kmock.Response:
        resource = self._known(request)
        selected = self._selection(request)
        try:
            params = WatchParams.parse(request.params)
        except ValueError as e:
            raise api_error(400, 'BadRequest', str(e), resource) from e
        events = self._watch(resource, selected, params)
        return kmock.Response(headers={'Content-Type': 'application/json'}, payload=events)

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        resource = self._known(request)
        body = self._body(request)
        meta = body.get('metadata') or {}
        name = meta.get('name') or (meta.get('generateName') and meta['generateName'] + secrets.token_hex(3))
        if not name:
            raise api_error(422, 'Invalid', 'metadata.name: Required value', resource)
        namespace = request.namespace or meta.get('namespace')
        async with self._lock:
            if self.fetch(resource, namespace, name) is not None:
                raise api_error(409, 'AlreadyExists', f'{resource.plural} "{name}" already exists', resource, name)
            obj = await self._save(resource, namespace, name, self._client_write(resource, body, None), None)
        return kmock.Response(status=201, payload=obj)

    async def _serve_update(self, request: kmock.Request) -> Object:
        """PATCH: JSON merge patch for all three kinds; server-side apply also creates."""
        resource = self._known(request)
        applying = self._patch_type(request) == APPLY
        body = self._body(request)
        async with self._lock:
            previous = self.fetch(resource, request.namespace, request.name)
            if previous is None and not applying:
                raise not_found(resource, request.name)
            self._check_version(resource, body, previous)
            merged = merge_patch(previous or {}, body)
            return await self._save(resource, request.namespace, request.name,
                                    self._client_write(resource, merged, previous), previous)

    async def _serve_replace(self, request: kmock.Request) -> Object:
        resource = self._known(request)
        body = self._body(request)
        async with self._lock:
            previous = self._existing(request)
            self._check_version(resource, body, previous)
            return await self._save(resource, request.namespace, request.name,
                                    self._client_write(resource, body, previous), previous)

    async def _serve_delete(self, request: kmock.Request) -> Object:
        async with self._lock:
            return await self._remove(self._known(request), self._existing(request))

    async def _serve_delete_collection(self, request: kmock.Request) -> Object:
        resource = self._known(request)
        selected = self._selection(request)
        async with self._lock:
            deleted = [await self._remove(resource, obj) for obj in self.find(resource, selected)]
        return self._list_of(resource, deleted)

    async def _serve_scale(self, request: kmock.Request) -> Object:
        return scale_of(self._existing(request))

    async def _serve_scale_update(self, request: kmock.Request) -> Object:
        if request.method == kmock.method.PATCH:
            self._patch_type(request)
        body = self._body(request)
        replicas = (body.get('spec') or {}).get('replicas')
        if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
            raise api_error(422, 'Invalid', f'spec.replicas: Invalid value: {replicas!r}', DEPLOYMENTS, request.name)
        async with self._lock:
            deployment = self._existing(request)
            self._check_version(DEPLOYMENTS, body, deployment)
            if replicas is not None and replicas != deployment['spec']['replicas']:
                patched = merge_patch(deployment, {'spec': {'replicas': replicas}})
                deployment = await self._save(DEPLOYMENTS, request.namespace, request.name, patched, deployment)
        return scale_of(deployment)

    async def _serve_pod_log(self, request: kmock.Request) -> kmock.Response:
        """The tail of the file that the pod's annotation names."""
        path = pathlib.Path(self._existing(request)['metadata']['annotations'][LOG_ANNOTATION])
        lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
        if (tail := request.params.get('tailLines')) is not None:
            lines = lines[max(len(lines) - int(tail), 0):]
        return kmock.Response(headers={'Content-Type': 'text/plain'}, payload=b''.join(lines))

    async def _serve_unknown_subresource(self, request: kmock.Request) -> Object:
        raise api_error(404, 'NotFound', 'the server could not find the requested resource', request.resource)

    # --- reaction helpers

    def _known(self, request: kmock.Request) -> kmock.resource:
        if request.resource not in self.resources:
            raise api_error(404, 'NotFound', 'the server could not find the requested resource', request.resource)
        return request.resource

    def _existing(self, request: kmock.Request) -> Object:
        resource = self._known(request)
        obj = self.fetch(resource, request.namespace, request.name)
        if obj is None:
            raise not_found(resource, request.name)
        return obj

    def _selection(self, request: kmock.Request) -> Predicate:
        """The objects that a list or a watch selects by namespace, name, labels and fields."""
        try:
            labels = label_selector(request.params.get('labelSelector', ''))
            fields = field_selector(request.params.get('fieldSelector', ''))
        except ValueError as e:
            raise api_error(400, 'BadRequest', str(e), request.resource) from e

        def selected(obj: Object) -> bool:
            meta = obj['metadata']
            return ((request.namespace is None or meta.get('namespace') == request.namespace)
                    and (request.name is None or meta['name'] == request.name)
                    and labels(meta.get('labels') or {}) and fields(obj))
        return selected

    def _body(self, request: kmock.Request) -> Object:
        if not isinstance(request.data, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object', request.resource)
        name = (request.data.get('metadata') or {}).get('name')
        if request.name and request.subresource is None and name not in (None, request.name):
            raise api_error(400, 'BadRequest', f'the name in the body ({name}) differs from the URL',
                            request.resource, request.name)
        return request.data

    def _patch_type(self, request: kmock.Request) -> str:
        headers = {key.lower(): value for key, value in request.headers.items()}
        patch_type = headers.get('content-type', '').split(';')[0].strip()
        if patch_type not in MERGE_PATCHES:
            raise api_error(415, 'UnsupportedMediaType', f'unsupported patch type: {patch_type!r}', request.resource)
        return patch_type

    def _check_version(self, resource: kmock.resource, body: Object, previous: Object | None) -> None:
        """Optimistic concurrency: a resourceVersion in the body must be the current one."""
        wanted = (body.get('metadata') or {}).get('resourceVersion')
        if wanted and previous is not None and wanted != previous['metadata']['resourceVersion']:
            name = previous['metadata']['name']
            raise api_error(409, 'Conflict', f'Operation cannot be fulfilled on {resource.plural} "{name}": '
                            'the object has been modified; please apply your changes to the latest version '
                            'and try again', resource, name)

    @staticmethod
    def _client_write(resource: kmock.resource, body: Object, previous: Object | None) -> Object:
        """What a client's write stores: statuses stay the controllers'; defaults as the API server sets them."""
        obj = {key: value for key, value in body.items() if key != 'status'}
        if previous is not None and 'status' in previous:
            obj['status'] = previous['status']
        if resource == DEPLOYMENTS:
            obj['spec'] = {'replicas': 1, **(obj.get('spec') or {})}
        if resource == SECRETS and 'stringData' in obj:
            encoded = {key: base64.b64encode(value.encode()).decode() for key, value in obj.pop('stringData').items()}
            obj['data'] = {**(obj.get('data') or {}), **encoded}
        return obj

    def _list_of(self, resource: kmock.resource, items: list[Object]) -> Object:
        return {'apiVersion': api_version(resource), 'kind': f'{self.resources[resource].kind}List',
                'metadata': {'resourceVersion': str(self._revision)}, 'items': items}

    def _bookmark(self, resource: kmock.resource, revision: int, initial_events_end: bool = False) -> Object:
        meta: Object = {'resourceVersion': str(revision)}
        if initial_events_end:
            meta['annotations'] = {'k8s.io/initial-events-end': 'true'}
        return {'type': 'BOOKMARK', 'object': {'apiVersion': api_version(resource),
                                               'kind': self.resources[resource].kind, 'metadata': meta}}

    def _backlog(self, resource: kmock.resource, selected: Predicate, params: WatchParams) -> list[Object]:
        """What a watch sends first: the current objects, or the selected changes since its resourceVersion."""
        if params.since == 0 or params.initial_events:
            events = [{'type': 'ADDED', 'object': obj} for obj in self.find(resource, selected)]
            if params.initial_events and params.bookmarks:
                events.append(self._bookmark(resource, self._revision, initial_events_end=True))
            return events
        if params.since < self._forgotten.get(resource, 0):
            return [{'type': 'ERROR', 'object': {
                'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Failure', 'reason': 'Expired',
                'code': 410, 'message': f'too old resource version: {params.since}'}}]
        changes = (change for change in self._history.get(resource, ()) if change.revision > params.since)
        return [event for change in changes if (event := change.event(selected)) is not None]

    async def _watch(self, resource: kmock.resource, selected: Predicate,
                     params: WatchParams) -> AsyncIterator[bytes | Object]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + params.seconds
        bus = self._buses[resource]
        async with self._lock:
            marker = await bus.mark()
            backlog = self._backlog(resource, selected, params)
            revision = self._revision  # every change up to it is in the backlog or skipped
        try:
            yield b''  # the headers go now, not with the first event
            for event in backlog:
                yield event
            if backlog and backlog[-1]['type'] == 'ERROR':
                return
            while (left := deadline - loop.time()) > 0:
                try:
                    change = await asyncio.wait_for(bus.get(since=marker), left)
                except TimeoutError:
                    break
                if change is None:  # the emulator stops
                    return
                revision = change.revision
                if (event := change.event(selected)) is not None:
                    yield event
            if params.bookmarks:
                yield self._bookmark(resource, revision)
        finally:
            await bus.unmark(marker)


def pre_stop_seconds(template: str) -> float:
    """The `sleep N` of the first container's preStop exec hook in a pod template (JSON), at most 5."""
    containers = json.loads(template).get('spec', {}).get('containers') or [{}]
    command = (((containers[0].get('lifecycle') or {}).get('preStop') or {}).get('exec') or {}).get('command') or []
    if len(command) == 2 and command[0] == 'sleep':
        with contextlib.suppress(ValueError):
            return min(float(command[1]), 5.0)
    return 0.0


def scale_of(deployment: Object) -> Object:
    """The ``autoscaling/v1`` Scale of a Deployment."""
    meta, spec, status = deployment['metadata'], deployment['spec'], deployment.get('status') or {}
    match_labels = (spec.get('selector') or {}).get('matchLabels') or {}
    return {
        'apiVersion': 'autoscaling/v1',
        'kind': 'Scale',
        'metadata': {key: meta[key] for key in ('name', 'namespace', 'uid', 'resourceVersion', 'creationTimestamp')},
        'spec': {'replicas': spec['replicas']},
        'status': {'replicas': status.get('readyReplicas', 0),
                   'selector': ','.join(f'{key}={value}' for key, value in match_labels.items())},
    }


# --- the controllers ---------------------------------------------------------------------------

class Waiting(Exception):
    """A replica cannot start yet: something it needs is missing."""


@attrs.define
class Replica:
    """A local process standing in for one pod of a Deployment."""
    number: int
    template: str  # the pod template it was started from, as canonical JSON
    port: int
    probe: Object | None  # the container's readinessProbe
    process: asyncio.subprocess.Process
    ready: bool = False
    service: str | None = None  # whose EndpointSlice publishes it

    @property
    def slice_name(self) -> str:
        return f'{self.service}-r{self.number}'


@attrs.define
class Controller:
    """The Deployment and EndpointSlice controllers and the kubelet, for managed Deployments."""
    api: Emulator
    uv: str
    workdir: pathlib.Path
    _replicas: dict[tuple[str, str], list[Replica]] = attrs.field(factory=dict)
    _numbers: itertools.count = attrs.field(factory=lambda: itertools.count(1))
    _crashes: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _restart_at: dict[tuple[str, str], float] = attrs.field(factory=dict)
    _waiting: dict[tuple[str, str], str] = attrs.field(factory=dict)
    _terminations: set[asyncio.Task] = attrs.field(factory=set)

    async def run(self) -> None:
        while True:
            self.api.changed.clear()
            await self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.api.changed.wait(), RECONCILE_SECONDS)

    async def reconcile(self) -> None:
        managed = {(obj['metadata']['namespace'], obj['metadata']['name']): obj
                   for obj in self.api.find(DEPLOYMENTS)
                   if (obj['metadata'].get('labels') or {}).get(MANAGED_LABEL) == 'true'}
        for key in self._replicas.keys() - managed.keys():
            replicas = self._replicas.pop(key)
            await self._retire(key, replicas, list(replicas))
        for key, deployment in managed.items():
            try:
                await self._sync(key, deployment)
            except Exception:
                log.exception('%s/%s: reconciliation failed', *key)

    async def shutdown(self) -> None:
        for replicas in self._replicas.values():
            for replica in replicas:
                self._terminate_later(replica)
        self._replicas.clear()
        await asyncio.gather(*self._terminations)

    async def _sync(self, key: tuple[str, str], deployment: Object) -> None:
        replicas = self._replicas.setdefault(key, [])
        await self._reap(key, replicas)
        await self._probe(key, replicas)
        template = json.dumps(deployment['spec']['template'], sort_keys=True)
        desired = deployment['spec']['replicas']
        current = sorted((r for r in replicas if r.template == template), key=lambda r: (not r.ready, r.number))
        await self._retire(key, replicas, current[desired:])
        for _ in range(desired - len(current)):
            if (replica := await self._start(key, deployment, template)) is None:
                break
            replicas.append(replica)
        await self._publish(key[0], deployment, replicas)
        if sum(r.ready for r in replicas if r.template == template) >= desired:
            await self._retire(key, replicas, [r for r in replicas if r.template != template])
        ready = sum(r.ready for r in replicas)
        await self.api.set_status(DEPLOYMENTS, *key, {
            'observedGeneration': deployment['metadata']['generation'],
            'replicas': len(replicas),
            'updatedReplicas': sum(r.template == template for r in replicas),
            'readyReplicas': ready,
            'availableReplicas': ready,
        })

    async def _reap(self, key: tuple[str, str], replicas: list[Replica]) -> None:
        """Forget the replicas whose process exited, and hold their restart back a little."""
        for replica in [r for r in replicas if r.process.returncode is not None]:
            log.warning('%s/%s: replica r%d exited with %s, see %s', *key, replica.number,
                        replica.process.returncode, self._log_path(key, replica.number))
            self._hold_back(key)
            await self._retire(key, replicas, [replica])

    def _hold_back(self, key: tuple[str, str]) -> None:
        """Delay the next start after a failure: 0.5 s, doubling up to 8 s until a replica gets ready."""
        crashes = self._crashes[key] = self._crashes.get(key, 0) + 1
        self._restart_at[key] = asyncio.get_running_loop().time() + min(0.5 * 2 ** (crashes - 1), 8.0)

    async def _probe(self, key: tuple[str, str], replicas: list[Replica]) -> None:
        for replica in replicas:
            if not replica.ready and await passes(replica.probe, replica.port):
                replica.ready = True
                self._crashes.pop(key, None)
                log.info('%s/%s: replica r%d is ready on port %d', *key, replica.number, replica.port)

    async def _start(self, key: tuple[str, str], deployment: Object, template: str) -> Replica | None:
        if asyncio.get_running_loop().time() < self._restart_at.get(key, 0):
            return None
        namespace, name = key
        pod_spec = deployment['spec']['template']['spec']
        container = pod_spec['containers'][0]
        try:
            script = self._script(namespace, pod_spec)
            env = self._environment(namespace, container)
        except Waiting as e:
            if self._waiting.get(key) != str(e):
                log.info('%s/%s: waiting: %s', *key, e)
                self._waiting[key] = str(e)
            return None
        self._waiting.pop(key, None)
        directory = self.workdir / name / str(deployment['metadata']['generation'])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / 'main.py').write_text(script)
        number, port = next(self._numbers), free_port()
        try:
            with open(self._log_path(key, number), 'ab') as output:
                process = await asyncio.create_subprocess_exec(
                    self.uv, 'run', '--script', str(directory / 'main.py'), cwd=directory,
                    env=env | {'PORT': str(port)}, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    start_new_session=True)
        except OSError as e:
            log.error('%s/%s: cannot run %s: %s', *key, self.uv, e)
            self._hold_back(key)
            return None
        log.info('%s/%s: started replica r%d (pid %d) for port %d', *key, number, process.pid, port)
        await self.api.store(PODS, pod_of(deployment, number, self._log_path(key, number)))
        return Replica(number, template, port, container.get('readinessProbe'), process)

    def _script(self, namespace: str, pod_spec: Object) -> str:
        for volume in pod_spec.get('volumes') or []:
            if 'configMap' in volume:
                name = volume['configMap']['name']
                configmap = self.api.fetch(CONFIGMAPS, namespace, name)
                if configmap is None or 'main.py' not in (configmap.get('data') or {}):
                    raise Waiting(f'ConfigMap {name} with main.py')
                return configmap['data']['main.py']
        raise Waiting('a configMap volume in the pod template')

    def _environment(self, namespace: str, container: Object) -> dict[str, str]:
        """The host's environment, the Secrets' keys, and the plain values but those naming container mounts."""
        env = dict(os.environ)
        for source in container.get('envFrom') or []:
            if 'secretRef' in source:
                env.update(self._secret(namespace, source['secretRef']))
        mounts = [mount['mountPath'].rstrip('/') for mount in container.get('volumeMounts') or []]
        env.update({var['name']: var['value'] for var in container.get('env') or []
                    if 'value' in var and not any(var['value'] == m or var['value'].startswith(m + '/')
                                                  for m in mounts)})
        return env

    def _secret(self, namespace: str, ref: Object) -> dict[str, str]:
        secret = self.api.fetch(SECRETS, namespace, ref['name'])
        if secret is None:
            if ref.get('optional'):
                return {}
            raise Waiting(f'Secret {ref["name"]}')
        return {key: base64.b64decode(value).decode('utf-8', 'surrogateescape')
                for key, value in (secret.get('data') or {}).items()}

    async def _publish(self, namespace: str, deployment: Object, replicas: list[Replica]) -> None:
        """Give each ready replica an EndpointSlice of the Service selecting its pods, and no other."""
        pod_labels = (deployment['spec']['template'].get('metadata') or {}).get('labels') or {}
        service = self._service_for(namespace, pod_labels)
        for replica in replicas:
            wanted = service if replica.ready else None
            if replica.service != wanted:
                await self._unpublish(namespace, replica)
                replica.service = wanted
                if wanted is not None:
                    await self.api.store(ENDPOINTSLICES, endpoint_slice(namespace, replica))

    async def _unpublish(self, namespace: str, replica: Replica) -> None:
        if replica.service is not None:
            await self.api.discard(ENDPOINTSLICES, namespace, replica.slice_name)
            replica.service = None

    def _service_for(self, namespace: str, pod_labels: Mapping[str, str]) -> str | None:
        for service in self.api.find(SERVICES, lambda obj: obj['metadata'].get('namespace') == namespace):
            selector = (service.get('spec') or {}).get('selector') or {}
            if selector and selector.items() <= pod_labels.items():
                return service['metadata']['name']
        return None

    async def _retire(self, key: tuple[str, str], replicas: list[Replica], doomed: list[Replica]) -> None:
        """Unpublish the replicas, then stop their processes (in the background)."""
        for replica in doomed:
            replicas.remove(replica)
            await self._unpublish(key[0], replica)
            # As the kubelet does: the preStop hook runs (endpoints are already withdrawn), then
            # SIGTERM; in-flight requests finish meanwhile. An exited process has nothing to wait for.
            delay = pre_stop_seconds(replica.template) if replica.process.returncode is None else 0
            self._terminate_later(replica, delay)
            await self.api.discard(PODS, key[0], pod_name(key[1], replica.number))
            log.info('%s/%s: stopping replica r%d', *key, replica.number)

    def _terminate_later(self, replica: Replica, delay: float = 0) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await terminate(replica.process)
        task = asyncio.create_task(later())
        self._terminations.add(task)
        task.add_done_callback(self._terminations.discard)

    def _log_path(self, key: tuple[str, str], number: int) -> pathlib.Path:
        return self.workdir / 'logs' / f'{pod_name(key[1], number)}.log'


def pod_name(deployment: str, number: int) -> str:
    return f'{deployment}-r{number}'


def pod_of(deployment: Object, number: int, log_path: pathlib.Path) -> Object:
    """The Pod that lists a replica (for its labels and its log); the process is its only life."""
    meta, template = deployment['metadata'], deployment['spec']['template']
    return {
        'apiVersion': 'v1',
        'kind': 'Pod',
        'metadata': {'name': pod_name(meta['name'], number), 'namespace': meta['namespace'],
                     'labels': (template.get('metadata') or {}).get('labels') or {},
                     'annotations': {LOG_ANNOTATION: str(log_path)}},
        'spec': template['spec'],
        'status': {'phase': 'Running', 'podIP': '127.0.0.1'},
    }


def endpoint_slice(namespace: str, replica: Replica) -> Object:
    return {
        'apiVersion': 'discovery.k8s.io/v1',
        'kind': 'EndpointSlice',
        'metadata': {'name': replica.slice_name, 'namespace': namespace,
                     'labels': {SERVICE_NAME_LABEL: replica.service, MANAGED_BY_LABEL: 'emulator'}},
        'addressType': 'IPv4',
        'endpoints': [{'addresses': ['127.0.0.1'],
                       'conditions': {'ready': True, 'serving': True, 'terminating': False}}],
        'ports': [{'name': 'http', 'port': replica.port, 'protocol': 'TCP'}],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


async def passes(probe: Object | None, port: int) -> bool:
    """Whether a replica passes its readinessProbe: an httpGet answered 200-399, or else a TCP connection."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        if (http := (probe or {}).get('httpGet')) is None:
            return True
        writer.write(f'GET {http.get("path", "/")} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n'.encode())
        status_line = (await asyncio.wait_for(reader.readline(), 1.0)).split()
        return len(status_line) >= 2 and status_line[1].isdigit() and 200 <= int(status_line[1]) < 400
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, and SIGKILL whatever is left of it after the grace period."""
    signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), GRACE_SECONDS)
    signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


# --- the program -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='A Kubernetes API emulator for the gateway tests.')
    parser.add_argument('--port', type=int, required=True, help='the port to serve on (0: any free one)')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--uv', default=default_uv(), help='the uv that runs the functions')
    parser.add_argument('--workdir', type=pathlib.Path, help='for the scripts and logs (default: a new temp dir)')
    return parser.parse_args(argv)


def default_uv() -> str:
    beside = pathlib.Path(sys.executable).with_name('uv')
    return str(beside) if beside.exists() else shutil.which('uv') or 'uv'


async def serve(args: argparse.Namespace) -> None:
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix='kube-emulator-'))
    (workdir / 'logs').mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with Emulator(audit_log=workdir / 'requests.log') as api, kmock.Server(api, host=args.host, port=args.port) as server:
        controller = Controller(api, args.uv, workdir)
        reconciling = asyncio.create_task(controller.run())
        # SIGUSR1 cuts every open watch, as an API server restart would: clients must re-watch.
        drops: set[asyncio.Task[None]] = set()

        def drop_watches() -> None:
            log.info('dropping every watch')
            task = asyncio.create_task(api.end_watches())
            drops.add(task)
            task.add_done_callback(drops.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, drop_watches)
        log.info('serving on %s:%d, workdir %s', args.host, server.port, workdir)
        print(f'READY {server.port}', flush=True)
        try:
            await stop.wait()
        finally:
            reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciling
            await controller.shutdown()
            await api.end_watches()
    log.info('stopped')


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format='%(asctime)s kube-emulator %(levelname)s %(message)s')
    asyncio.run(serve(parse_args()))


if __name__ == '__main__':
    main()
