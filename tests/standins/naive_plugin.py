"""A device plugin that registers once and never looks again: how device plugins behaved
before they watched kubelet.sock (F12, docs/failure-modes.md). After a kubelet restart wipes the
device-plugins directory it keeps running, unregistered, its pod still Running.

It speaks the real device plugin API (v1beta1 over gRPC on unix sockets) and logs like
NVIDIA's plugin (klog lines), so `gpunode doctor` reads it as it would read that one.

    python -m standins.naive_plugin [--kubelet-dir DIR (default $GPUNODE_KUBELET_DIR)] [--devices 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from gpunode.plugin.v1beta1 import api_pb2, api_pb2_grpc


def klog(message: str) -> None:
    stamp = time.strftime("%m%d %H:%M:%S", time.gmtime())
    sys.stderr.write(f"I{stamp}.000000       1 main.go:1] {message}\n")
    sys.stderr.flush()


class _Plugin(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, devices: int) -> None:
        self.devices = [api_pb2.Device(ID=f"GPU-naive-{i}", health="Healthy") for i in range(devices)]
        self.stop = threading.Event()

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions()

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        yield api_pb2.ListAndWatchResponse(devices=self.devices)
        while not self.stop.wait(0.5) and context.is_active():
            pass

    def Allocate(self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext) -> api_pb2.AllocateResponse:
        return api_pb2.AllocateResponse(
            container_responses=[
                api_pb2.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(c.devicesIDs)})
                for c in request.container_requests
            ]
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--kubelet-dir", default=os.environ.get("GPUNODE_KUBELET_DIR", "/var/lib/kubelet/device-plugins")
    )
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--resource", default="nvidia.com/gpu")
    args = parser.parse_args()
    socket_name = "nvidia-gpu.sock"
    path = os.path.join(args.kubelet_dir, socket_name)
    if os.path.exists(path):
        os.unlink(path)
    plugin = _Plugin(args.devices)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    api_pb2_grpc.add_DevicePluginServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    klog(f"Starting GRPC server for '{args.resource}'")
    with grpc.insecure_channel(f"unix:{os.path.join(args.kubelet_dir, 'kubelet.sock')}") as channel:
        api_pb2_grpc.RegistrationStub(channel).Register(
            api_pb2.RegisterRequest(version="v1beta1", endpoint=socket_name, resource_name=args.resource), timeout=10
        )
    klog(f"Registered device plugin for '{args.resource}' with Kubelet")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    plugin.stop.set()
    server.stop(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
