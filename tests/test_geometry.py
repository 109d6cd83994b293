import numpy as np

from maniflow.geometry import (
    cam2world_gl_from_extrinsic_cv,
    camera_position,
    euler_to_matrix,
    intrinsics_from_fovy,
    look_at_extrinsic_cv,
    matrix_to_euler,
    matrix_to_quat_wxyz,
    project_points,
    quat_wxyz_to_matrix,
)


def test_head_camera_intrinsics_match_robotwin():
    k = intrinsics_from_fovy(320, 240, 37.0)
    assert np.isclose(k[1, 1], 358.6, atol=0.1)  # REFERENCE: fy about 358.6
    assert (k[0, 2], k[1, 2]) == (160.0, 120.0)


def test_quaternion_and_euler_round_trip():
    rng = np.random.default_rng(0)
    rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (500, 3))
    r = euler_to_matrix(rpy)
    assert np.allclose(r @ np.swapaxes(r, 1, 2), np.eye(3), atol=1e-12)
    q = matrix_to_quat_wxyz(r)
    assert np.allclose(np.linalg.norm(q, axis=1), 1) and (q[:, 0] >= 0).all()
    assert np.allclose(quat_wxyz_to_matrix(q), r, atol=1e-12)
    assert np.allclose(matrix_to_euler(r), rpy, atol=1e-9)


def test_quaternion_convention_is_w_first():
    yaw90 = euler_to_matrix(np.array([0, 0, np.pi / 2]))
    assert np.allclose(matrix_to_quat_wxyz(yaw90), [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])


def test_look_at_projection_and_gl_matrix_agree():
    eye, target = np.array([0.0, -0.55, 1.32]), np.array([0.0, 0.08, 0.74])
    e = look_at_extrinsic_cv(eye, target)
    k = intrinsics_from_fovy(320, 240, 37.0)
    uv, depth = project_points(target, k, e)
    assert np.allclose(uv, [160, 120]) and depth > 0  # the target is the image centre
    assert np.allclose(camera_position(e), eye)
    # A point to the world's +x (right of a camera looking along +y) is right in the image;
    # a point above the target is higher in the image (smaller v).
    assert project_points(target + [0.1, 0, 0], k, e)[0][0] > 160
    assert project_points(target + [0, 0, 0.1], k, e)[0][1] < 120
    gl = cam2world_gl_from_extrinsic_cv(e)
    assert np.allclose(gl[:3, 3], eye)
    assert np.allclose(gl[:3, 2], -(target - eye) / np.linalg.norm(target - eye))  # GL looks along -z
    behind = project_points(eye - (target - eye), k, e)[1]
    assert behind < 0
