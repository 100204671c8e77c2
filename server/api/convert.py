"""Store models -> protobuf messages."""

from __future__ import annotations

from functions.v1 import deployment_pb2, execution_pb2, function_pb2, runtime_pb2

from server.domain.runtimes import Runtime
from server.store import models
from server.store.lifecycles import BuildStatus


def function(fn: models.Function) -> function_pb2.Function:
    return function_pb2.Function(
        id=fn.uid,
        execute=fn.execute,
        name=fn.name,
        date_created=fn.date_created,
        date_updated=fn.date_updated,
        status=fn.status,
        runtime=fn.runtime,
        deployment=fn.deployment,
        vars=fn.vars,
        events=fn.events,
        schedule=fn.schedule,
        schedule_next=fn.schedule_next,
        schedule_previous=fn.schedule_previous,
        timeout=fn.timeout,
    )


def runtime(rt: Runtime) -> runtime_pb2.Runtime:
    return runtime_pb2.Runtime(
        id=rt.id, name=rt.name, version=rt.version, base=rt.base, image=rt.image, logo=rt.logo, supports=rt.supports
    )


def deployment(dep: models.Deployment, build: models.Build | None) -> deployment_pb2.Deployment:
    return deployment_pb2.Deployment(
        id=dep.uid,
        resource_id=dep.function,
        resource_type="functions",
        date_created=dep.date_created,
        entrypoint=dep.entrypoint,
        size=dep.size,
        build_id=dep.build,
        activate=dep.activate,
        status=(build.status if build else BuildStatus.PROCESSING).value,
        build_stdout=build.stdout if build else "",
        build_stderr=build.stderr if build else "",
        chunks_total=dep.chunks_total,
        chunks_uploaded=dep.chunks_uploaded,
    )


def execution(ex: models.Execution) -> execution_pb2.Execution:
    return execution_pb2.Execution(
        id=ex.uid,
        read=ex.read,
        function_id=ex.function,
        date_created=ex.date_created,
        trigger=ex.trigger,
        status=ex.status.value,
        status_code=ex.status_code,
        stdout=ex.stdout,
        stderr=ex.stderr,
        time=ex.time,
        logs=ex.logs,
        errors=ex.errors,
        attempts=ex.attempts,
    )
