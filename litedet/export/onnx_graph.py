"""A small read/write view of an ``onnx.GraphProto`` for exact graph rewrites (no torch):
producer and consumer maps, constant access, and dead-code removal. Used by the export's
image-normalisation fold and by the INT8 rewrites (``litedet.compress.quantize``)."""

from __future__ import annotations

from typing import Any

import numpy as np


class OnnxGraph:
    """Producer/consumer maps and initializer access over an ``onnx.GraphProto``."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def set_array(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        self.initializers[name].CopyFrom(numpy_helper.from_array(value, name))

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = self.graph.initializer[-1]
        return name

    def only_consumer(self, tensor: str, node: Any) -> bool:
        return tensor not in self.outputs and [id(n) for n in self.consumers.get(tensor, [])] == [id(node)]

    def private_weights(self, node: Any) -> bool:
        """The node's weight/bias inputs are initializers used by no other node."""
        return all(name in self.initializers and len(self.consumers.get(name, [])) == 1 for name in node.input[1:] if name)


def drop_unused(graph: Any) -> None:
    """Remove initializers and Constant nodes nothing reads any more."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
