"""The kubelet's PodResources API v1: api.proto and the modules grpcio-tools generated from
it (api_pb2, api_pb2_grpc, with typed stubs). Do not edit the generated files; see
tests/plugin/plugin_generate_api.py."""
