"""Draw the synthetic street-scene frames shipped in segedge/assets/frames/ (default export check and INT8 source).

Every pixel is drawn here with OpenCV from a fixed seed, so the frames carry no third-party licence: sky gradient,
buildings with windows, road with lane markings, sidewalks, poles, trees, cars, pedestrians, signs, then light blur,
sensor noise and JPEG compression. They only need to drive activations through realistic ranges (smooth regions,
edges, textures, saturated colours); for best INT8 accuracy calibrate with frames from your own camera instead
(see README.md).

The shipped frames are package data, so an installed segedge finds them without this checkout; this script is
how they were made (the defaults below reproduce them), kept here with the notes on calibrating on your own frames.

Run:  python calib_data/make_frames.py [--count 10] [--size 360x480] [--seed 0] [--out segedge/assets/frames]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def _sky(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    top = np.array(rng.choice([[235, 170, 90], [220, 200, 170], [200, 190, 185], [250, 200, 120]]), np.float32)
    bottom = np.array([245, 235, 225], np.float32) * rng.uniform(0.85, 1.0)
    t = np.linspace(0.0, 1.0, max(horizon, 1), dtype=np.float32)[:, None, None]
    img[:horizon] = ((1 - t) * top + t * bottom).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):  # soft clouds
        c = (int(rng.integers(0, w)), int(rng.integers(0, max(horizon // 2, 1))))
        cv2.ellipse(img, c, (int(rng.integers(30, 90)), int(rng.integers(8, 20))), 0, 0, 360,
                    (248, 248, 248), -1, cv2.LINE_AA)


def _buildings(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    x = -int(rng.integers(0, 40))
    while x < w:
        bw = int(rng.integers(50, 140))
        top = int(rng.integers(int(horizon * 0.1), int(horizon * 0.8)))
        color = tuple(int(v) for v in rng.integers(60, 200, 3))
        cv2.rectangle(img, (x, top), (x + bw, horizon + 10), color, -1)
        win = tuple(int(v * 0.55) for v in color)
        for wy in range(top + 8, horizon - 6, int(rng.integers(14, 22))):
            for wx in range(x + 6, x + bw - 10, int(rng.integers(14, 22))):
                if rng.random() < 0.85:
                    lit = rng.random() < 0.15
                    cv2.rectangle(img, (wx, wy), (wx + 7, wy + 9), (120, 210, 240) if lit else win, -1)
        x += bw + int(rng.integers(0, 12))


def _road(img: np.ndarray, horizon: int, rng: np.random.Generator) -> tuple[int, int]:
    h, w = img.shape[:2]
    vx = int(w * rng.uniform(0.4, 0.6))
    gray = int(rng.integers(70, 110))
    left, right = int(-w * 0.4), int(w * 1.4)
    cv2.fillPoly(img, [np.array([[vx - 6, horizon], [vx + 6, horizon], [right, h], [left, h]])],
                 (gray, gray, gray + 4))
    walk = (150, 160, 165)
    cv2.fillPoly(img, [np.array([[0, horizon], [vx - 8, horizon], [left, h], [0, h]])], walk)
    cv2.fillPoly(img, [np.array([[vx + 8, horizon], [w, horizon], [w, h], [right, h]])], walk)
    for k in range(8):  # dashed centre line, growing with distance from the horizon
        t0, t1 = (k + 0.2) / 8, (k + 0.6) / 8
        y0, y1 = int(horizon + (h - horizon) * t0 ** 1.6), int(horizon + (h - horizon) * t1 ** 1.6)
        half0, half1 = max(1, int(6 * t0 ** 1.6)), max(1, int(6 * t1 ** 1.6))
        xc0 = int(vx + (w * 0.5 - vx) * t0 ** 1.6)
        xc1 = int(vx + (w * 0.5 - vx) * t1 ** 1.6)
        cv2.fillPoly(img, [np.array([[xc0 - half0, y0], [xc0 + half0, y0], [xc1 + half1, y1], [xc1 - half1, y1]])],
                     (235, 240, 240))
    return vx, gray


def _car(img: np.ndarray, x: int, y: int, scale: float, rng: np.random.Generator) -> None:
    cw, ch = int(90 * scale), int(45 * scale)
    color = tuple(int(v) for v in rng.choice([[40, 40, 200], [200, 60, 30], [30, 30, 30], [220, 220, 220],
                                                [60, 140, 60], [180, 180, 40]]))
    cv2.rectangle(img, (x, y - ch), (x + cw, y), color, -1)
    cv2.rectangle(img, (x + cw // 5, y - int(ch * 1.5)), (x + cw * 4 // 5, y - ch), color, -1)
    cv2.rectangle(img, (x + cw // 4, y - int(ch * 1.4)), (x + cw * 3 // 4, y - ch - 2), (90, 70, 60), -1)
    r = max(2, int(10 * scale))
    for wx in (x + cw // 5, x + cw * 4 // 5):
        cv2.circle(img, (wx, y), r, (20, 20, 20), -1, cv2.LINE_AA)
    cv2.rectangle(img, (x + 2, y - ch + 3), (x + max(4, cw // 10), y - ch + max(5, ch // 5)), (80, 200, 255), -1)


def _pole(img: np.ndarray, x: int, base: int, top: int) -> None:
    cv2.line(img, (x, base), (x, top), (70, 70, 75), 3)
    cv2.line(img, (x, top), (x + 25, top + 4), (70, 70, 75), 2)


def _tree(img: np.ndarray, x: int, base: int, size: int, rng: np.random.Generator) -> None:
    cv2.line(img, (x, base), (x, base - size), (30, 60, 90), max(2, size // 12))
    for _ in range(6):
        c = (x + int(rng.integers(-size // 3, size // 3 + 1)), base - size + int(rng.integers(-size // 4, size // 4 + 1)))
        green = (int(rng.integers(20, 60)), int(rng.integers(100, 160)), int(rng.integers(30, 80)))
        cv2.circle(img, c, int(size * rng.uniform(0.2, 0.35)), green, -1, cv2.LINE_AA)


def _pedestrian(img: np.ndarray, x: int, base: int, height: int, rng: np.random.Generator) -> None:
    body = tuple(int(v) for v in rng.integers(20, 220, 3))
    head = max(2, height // 8)
    cv2.circle(img, (x, base - height + head), head, (120, 160, 200), -1, cv2.LINE_AA)
    cv2.rectangle(img, (x - height // 8, base - height + 2 * head), (x + height // 8, base - height // 2), body, -1)
    cv2.line(img, (x - 2, base - height // 2), (x - height // 8, base), (50, 40, 40), max(1, height // 20))
    cv2.line(img, (x + 2, base - height // 2), (x + height // 8, base), (50, 40, 40), max(1, height // 20))


def draw_frame(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One synthetic BGR street scene of (H, W)."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    horizon = int(h * rng.uniform(0.38, 0.52))
    _sky(img, horizon, rng)
    _buildings(img, horizon, rng)
    _road(img, horizon, rng)
    for _ in range(rng.integers(2, 5)):
        side = rng.choice([-1, 1])
        x = int(w * (0.1 if side < 0 else 0.85) + rng.integers(-30, 30))
        _tree(img, x, int(horizon + (h - horizon) * rng.uniform(0.05, 0.3)), int(rng.integers(40, 100)), rng)
    for _ in range(rng.integers(2, 5)):
        x = int(rng.integers(0, w))
        _pole(img, x, int(horizon + (h - horizon) * rng.uniform(0.1, 0.5)), int(h * rng.uniform(0.05, 0.3)))
    cars = sorted(rng.uniform(0.05, 1.0, size=int(rng.integers(2, 6))))
    for t in cars:  # far cars first so near ones overlap them
        y = int(horizon + (h - horizon) * t)
        scale = 0.25 + 1.2 * t
        _car(img, int(rng.integers(-20, w - 40)), y, scale, rng)
    for _ in range(rng.integers(0, 4)):
        t = rng.uniform(0.1, 0.9)
        _pedestrian(img, int(rng.choice([rng.integers(5, w // 5), rng.integers(w * 4 // 5, w - 5)])),
                    int(horizon + (h - horizon) * t), int(20 + 90 * t), rng)
    if rng.random() < 0.7:  # a traffic sign
        x, y = int(rng.integers(20, w - 20)), int(horizon * rng.uniform(0.6, 1.0))
        cv2.line(img, (x, y), (x, y + 60), (80, 80, 80), 2)
        cv2.circle(img, (x, y), 10, (30, 30, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (x, y), 6, (245, 245, 245), -1, cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (3, 3), 0.8)
    noise = rng.normal(0.0, 4.0, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    gain = rng.uniform(0.75, 1.15)  # exposure variation
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def main() -> None:
    """Write the frames as JPEG files."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--size", default="360x480", help="HEIGHTxWIDTH")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "segedge" / "assets" / "frames"),
                    help="output folder (default: the package's shipped frames, segedge/assets/frames)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        rng = np.random.default_rng([args.seed, i])
        frame = draw_frame((h, w), rng)
        cv2.imwrite(str(out / f"street_{i:02d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"wrote {args.count} frames of {h}x{w} to {out}")


if __name__ == "__main__":
    main()
