"""The render API's OpenAPI 3.0 description, written by hand next to the handlers it describes.

Kept as a plain dict (no generator dependency). ``tests/test_serve_server.py`` fuzzes the live server
from it with schemathesis, which fails when handlers and this description disagree.
"""

from __future__ import annotations

from simgen.data.poses import CONVENTIONS, DEFAULT_CONVENTION, MAX_COORD, QUAT_NORM_TOL
from simgen.serve.api import (
    DEFAULT_HFOV_DEG,
    DEFAULT_SIZE,
    DEPTH_FORMATS,
    ENCODINGS,
    FOCAL_RANGE,
    MAX_PRINCIPAL,
)
from simgen.serve.config import ServeConfig
from simgen.serve.scene import OUTPUTS, STUFF_ID_OFFSET

_NUM = {"type": "number"}


def _error_response(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _camera_properties(cfg: ServeConfig) -> dict:
    return {
        "convention": {
            "type": "string",
            "enum": list(CONVENTIONS),
            "default": DEFAULT_CONVENTION,
            "description": "camera axes of the pose's rotation: gazebo = camera link (x forward, y left, z up); "
            "ros_optical / opencv = x right, y down, z forward; opengl = x right, y up, z backward",
        },
        "width": {"type": "integer", "minimum": 1, "maximum": cfg.max_width, "default": DEFAULT_SIZE[0]},
        "height": {"type": "integer", "minimum": 1, "maximum": cfg.max_height, "default": DEFAULT_SIZE[1]},
        "fx": {
            "type": "number",
            "minimum": FOCAL_RANGE[0],
            "maximum": FOCAL_RANGE[1],
            "description": "focal length x (pixels); excludes hfov_*",
        },
        "fy": {
            "type": "number",
            "minimum": FOCAL_RANGE[0],
            "maximum": FOCAL_RANGE[1],
            "description": "focal length y (pixels, default fx)",
        },
        "cx": {
            "type": "number",
            "minimum": -MAX_PRINCIPAL,
            "maximum": MAX_PRINCIPAL,
            "description": "principal point x (pixels from the left edge, default width/2)",
        },
        "cy": {
            "type": "number",
            "minimum": -MAX_PRINCIPAL,
            "maximum": MAX_PRINCIPAL,
            "description": "principal point y (pixels from the top edge, default height/2)",
        },
        "hfov_deg": {
            "type": "number",
            "default": DEFAULT_HFOV_DEG,
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": 180,
            "exclusiveMaximum": True,
            "description": "horizontal field of view in degrees, (0, 180); square pixels, centred principal point",
        },
        "hfov_rad": {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "maximum": 3.141592653589793,
            "exclusiveMaximum": True,
            "description": "horizontal field of view in radians (SDF <horizontal_fov>)",
        },
    }


def _output_properties() -> dict:
    return {
        "outputs": {
            "type": "array",
            "items": {"type": "string", "enum": list(OUTPUTS)},
            "minItems": 1,
            "default": list(OUTPUTS),
        },
        "encoding": {
            "type": "string",
            "enum": list(ENCODINGS),
            "default": "npz",
            "description": "npz: numpy archive; multipart: multipart/mixed of PNGs plus meta.json",
        },
        "depth_format": {
            "type": "string",
            "enum": list(DEPTH_FORMATS),
            "description": "float32 metres (npz member 'depth', default with npz) or uint16 millimetres "
            "('depth_mm' / 16-bit PNG, required with multipart)",
        },
    }


def openapi_spec(cfg: ServeConfig, rgb_source: str = "mesh") -> dict:
    """The OpenAPI 3.0.3 document served at ``GET /openapi.json``; ``rgb_source`` (``"gaussians"`` or
    ``"mesh"``) is what this server renders ``rgb`` from."""
    rgb_text = (
        "the build's trained 3D Gaussians (gaussians.ply)"
        if rgb_source == "gaussians"
        else "the panoptic mesh's vertex colours"
    )
    cam = _camera_properties(cfg)
    pose_params = [
        {
            "name": n,
            "in": "query",
            "schema": {
                "type": "number",
                "minimum": -MAX_COORD if n in "xyz" else -1,
                "maximum": MAX_COORD if n in "xyz" else 1,
            },
            "description": d,
        }
        for n, d in (
            ("x", "position x (m, world frame)"),
            ("y", "position y (m)"),
            ("z", "position z (m)"),
            ("qx", "quaternion x (scalar-last, unit norm)"),
            ("qy", "quaternion y"),
            ("qz", "quaternion z"),
            ("qw", "quaternion w"),
        )
    ]
    png_params = [
        *pose_params,
        {
            "name": "matrix",
            "in": "query",
            "schema": {"type": "string"},
            "description": "16 comma-separated numbers, row-major 4x4 camera-to-world (instead of x..qw)",
        },
        *({"name": n, "in": "query", "schema": s} for n, s in cam.items()),
        {
            "name": "vis",
            "in": "query",
            "schema": {"type": "boolean"},
            "description": "colourised for viewing",
        },
        {
            "name": "depth_max",
            "in": "query",
            "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "description": "vis depth colour range (m)",
        },
    ]
    png_headers = {
        "X-Simgen-Intrinsics": {"schema": {"type": "string"}, "description": "fx fy cx cy width height"},
        "X-Simgen-C2W-CV": {
            "schema": {"type": "string"},
            "description": "16 numbers, OpenCV-axes camera-to-world",
        },
    }
    errors = {
        "400": _error_response("invalid input; 'field' names the offending field"),
        "413": _error_response("request body larger than the server's limit"),
        "503": _error_response("server busy (bounded queue full); retry after Retry-After seconds"),
    }
    # JSON bodies only: no CORS-simple content type (text/plain, forms) can trigger a render.
    body_errors = {"415": _error_response("Content-Type is not application/json")}

    def png_op(output: str, description: str) -> dict:
        return {
            "get": {
                "summary": f"{output} image as PNG (for curl and browsers)",
                "description": description,
                "operationId": f"render_{output}_png",
                "parameters": png_params,
                "responses": {
                    "200": {"description": description, "headers": png_headers, "content": {"image/png": {}}},
                    **errors,
                },
            }
        }

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "simgen render server",
            "version": "1",
            "description": "Renders RGB, depth and panoptic images of a simgen build/export for camera poses "
            "(e.g. from Gazebo). Quaternions are scalar-last (qx, qy, qz, qw) and must be unit-norm within "
            f"{QUAT_NORM_TOL}. Panoptic segment ids: instance id for things, {STUFF_ID_OFFSET} + category_id "
            f"for category-only regions, 0 = void. This server renders rgb from {rgb_text} "
            f"(rgb_source={rgb_source}); depth and panoptic are rendered from the panoptic mesh (mesh_backend in GET /scene). "
            "See docs/serve.md.",
        },
        "paths": {
            "/render": {
                "post": {
                    "summary": "Render one camera",
                    "operationId": "render",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/RenderRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "npz archive (rgb, depth|depth_mm, panoptic, K, c2w_cv, segments, "
                            "meta) or multipart/mixed of PNGs and meta.json",
                            "content": {"application/x-npz": {}, "multipart/mixed": {}},
                        },
                        **errors,
                        **body_errors,
                    },
                }
            },
            "/render/batch": {
                "post": {
                    "summary": "Render many poses with one camera model",
                    "operationId": "render_batch",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "like /render with a leading pose axis N on every array",
                            "content": {"application/x-npz": {}, "multipart/mixed": {}},
                        },
                        **errors,
                        **body_errors,
                    },
                }
            },
            "/render/rig": {
                "post": {
                    "summary": "Render several cameras of one rig pose (a robot's cameras, once per tick)",
                    "operationId": "render_rig",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/RigRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "npz archive: <name>/rgb, <name>/depth|depth_mm, <name>/panoptic, "
                            "<name>/K, <name>/c2w_cv per camera, segments {name: [...]}, meta (cameras, rig_pose)",
                            "content": {"application/x-npz": {}},
                        },
                        **errors,
                        **body_errors,
                    },
                }
            },
            "/render/rgb.png": png_op("rgb", "RGB PNG"),
            "/render/depth.png": png_op(
                "depth", "16-bit PNG in millimetres (0 = no hit), or a colourised RGB PNG with vis=1"
            ),
            "/render/panoptic.png": png_op(
                "panoptic",
                "RGB PNG, COCO id encoding id = R + 256 G + 256^2 B (segments in the X-Simgen-Segments "
                "header), or distinct colours with vis=1",
            ),
            "/scene": {
                "get": {
                    "summary": "Categories, instances, bounds and a default camera",
                    "operationId": "scene",
                    "responses": {
                        "200": {
                            "description": "scene description",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Scene"}}
                            },
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and queue counters of the answering process",
                    "operationId": "healthz",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                            },
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "Viewer page (fly a camera, see RGB, depth and panoptic)",
                    "operationId": "viewer",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "field"],
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string", "nullable": True},
                    },
                },
                "PoseQuaternion": {
                    "type": "object",
                    "required": ["x", "y", "z", "qx", "qy", "qz", "qw"],
                    "additionalProperties": False,
                    "properties": {
                        **{k: {"type": "number", "minimum": -MAX_COORD, "maximum": MAX_COORD} for k in "xyz"},
                        **{
                            k: {"type": "number", "minimum": -1, "maximum": 1}
                            for k in ("qx", "qy", "qz", "qw")
                        },
                    },
                },
                "PoseMatrix": {
                    "type": "object",
                    "required": ["matrix"],
                    "additionalProperties": False,
                    "properties": {
                        "matrix": {
                            "type": "array",
                            "minItems": 4,
                            "maxItems": 4,
                            "items": {"type": "array", "minItems": 4, "maxItems": 4, "items": _NUM},
                            "description": "row-major 4x4 camera-to-world, last row 0 0 0 1",
                        }
                    },
                },
                "Pose": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/PoseQuaternion"},
                        {"$ref": "#/components/schemas/PoseMatrix"},
                    ]
                },
                "RenderRequest": {
                    "type": "object",
                    "required": ["pose"],
                    "additionalProperties": False,
                    "properties": {
                        "pose": {"$ref": "#/components/schemas/Pose"},
                        **cam,
                        **_output_properties(),
                    },
                },
                "BatchRequest": {
                    "type": "object",
                    "required": ["poses"],
                    "additionalProperties": False,
                    "properties": {
                        "poses": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": cfg.max_batch,
                            "items": {"$ref": "#/components/schemas/Pose"},
                        },
                        **cam,
                        **_output_properties(),
                    },
                },
                "RigCamera": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {
                            "type": "string",
                            "pattern": "^[A-Za-z0-9_-]{1,64}$",
                            "description": "unique within the request (default cam<index>); prefixes its npz members",
                        },
                        "offset": {
                            "$ref": "#/components/schemas/Pose",
                            "description": "the camera frame in the rig frame, same convention (default: identity)",
                        },
                        **{k: v for k, v in cam.items() if k != "convention"},
                        "outputs": _output_properties()["outputs"],
                    },
                },
                "RigRequest": {
                    "type": "object",
                    "required": ["pose", "cameras"],
                    "additionalProperties": False,
                    "properties": {
                        "pose": {"$ref": "#/components/schemas/Pose"},
                        "convention": cam["convention"],
                        "cameras": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": cfg.max_batch,
                            "items": {"$ref": "#/components/schemas/RigCamera"},
                        },
                        "encoding": {"type": "string", "enum": ["npz"], "default": "npz"},
                        "depth_format": _output_properties()["depth_format"],
                    },
                },
                "Scene": {
                    "type": "object",
                    "required": [
                        "world_frame",
                        "world_bounds",
                        "categories",
                        "instances",
                        "default_camera",
                        "rgb_source",
                    ],
                    "properties": {
                        "world_frame": {"type": "string", "enum": ["gazebo", "scene"]},
                        "world_bounds": {"type": "object"},
                        "categories": {"type": "array", "items": {"type": "object"}},
                        "instances": {"type": "array", "items": {"type": "object"}},
                        "segments": {"type": "array", "items": {"type": "object"}},
                        "default_camera": {"type": "object"},
                        "stuff_id_offset": {"type": "integer"},
                        "mesh_backend": {
                            "type": "string",
                            "enum": ["raycast", "zbuffer", "raster"],
                            "description": "what renders depth, panoptic and mesh rgb: embree ray casting, "
                            "the compiled CPU z-buffer or OpenGL rasterization (--backend)",
                        },
                        "rgb_mode": {
                            "type": "string",
                            "enum": ["auto", "gaussians", "mesh"],
                            "description": "the --rgb setting",
                        },
                        "rgb_source": {
                            "type": "string",
                            "enum": ["gaussians", "mesh"],
                            "description": "what rgb is rendered from: the build's Gaussians (gaussians.ply) "
                            "or the panoptic mesh's vertex colours; depth and panoptic always come from the mesh",
                        },
                        "gaussians": {
                            "type": "object",
                            "nullable": True,
                            "properties": {"path": {"type": "string"}, "count": {"type": "integer"}},
                            "description": "the Gaussians rendered for rgb (null: mesh colours)",
                        },
                        "limits": {"type": "object"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string"},
                        "pid": {"type": "integer"},
                        "running": {"type": "integer"},
                        "waiting": {"type": "integer"},
                        "served": {"type": "integer"},
                        "rejected": {"type": "integer"},
                    },
                },
            }
        },
    }
