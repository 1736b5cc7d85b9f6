"""A KServe custom predictor (KServe's own Python model server) serving OpenCV's Haar face detector.

The third-party Open Inference Protocol server of tests/test_openinference_servers.py, the way
a platform team would wrap a detector: tensor names, box corners and numeric class ids of its
own (TensorFlow Object Detection style), so the preprocessor's mapping is exercised, and no
edgeoffload timings or replica name in its answers.

    python tests/kserve_faces.py --http_port PORT --model_name faces

Input `images`: the encoded image, as one BYTES element holding its base64 text, or as UINT8
bytes. Outputs: `detection_boxes` (FP32 [N, 4], x1 y1 x2 y2 pixels), `detection_scores` (FP32
[N]), `detection_classes` (INT32 [N], 0 = face).
"""
from __future__ import annotations

import argparse
import base64
import uuid

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InvalidInput

from edgeoffload.detect import DetectorConfig, load_detector
from edgeoffload.frames import FrameError, decode


class Faces(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.detector = None
        self.load()

    def load(self) -> bool:
        self.detector = load_detector(DetectorConfig(kind="haar-face"))
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [{"name": "images", "datatype": "BYTES", "shape": [1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "detection_boxes", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "detection_scores", "datatype": "FP32", "shape": [-1]},
                {"name": "detection_classes", "datatype": "INT32", "shape": [-1]}]

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        tensor = payload.inputs[0]
        if tensor.datatype == "UINT8":
            encoded = tensor.as_numpy().astype(np.uint8).tobytes()
        else:
            [text] = tensor.as_numpy().reshape(-1)
            encoded = base64.b64decode(text)
        try:
            detections = self.detector.detect(decode(encoded))
        except FrameError as exc:
            raise InvalidInput(str(exc)) from None
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d.box for d in detections)],
                         dtype=np.float32).reshape(-1, 4)
        outputs = [InferOutput("detection_boxes", list(boxes.shape), "FP32"),
                   InferOutput("detection_scores", [len(detections)], "FP32"),
                   InferOutput("detection_classes", [len(detections)], "INT32")]
        outputs[0].set_data_from_numpy(boxes, binary_data=False)
        outputs[1].set_data_from_numpy(np.array([d.score for d in detections], dtype=np.float32), binary_data=False)
        outputs[2].set_data_from_numpy(np.zeros(len(detections), dtype=np.int32), binary_data=False)
        # KServe's REST layer insists on a response id, which the protocol leaves optional
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--model_name", default="faces")
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, enable_grpc=False).start([Faces(args.model_name)])
