#!/usr/bin/env python3
"""Numerical parity of dynamicrafter_core's CamI2V support (camera-controlled DynamiCrafter) against reference tensors
made by the original code (ZGCTroy/CamI2V), in the manner of parity_check.py. A project file, written for the
tiny_cami2v fixture (shared/fixtures/tiny_cami2v/README.md lists every tensor and the tolerances used here).

usage: cami2v_parity_check.py FIXTURE_DIR [NAME] [-v]   (NAME defaults to the only *.config.json in the folder)

A fixture is NAME.config.json (the original yaml's `model:` section as JSON, frames, height, width, the patched
blocks, the block whose internals are stored, the DDIM run), the checkpoint it names (the original's key layout) and
NAME.reference.safetensors. A check runs when its reference tensors are in the reference file. Exit status 0 when
every check that runs is within tolerance; the last line printed is the verdict. Each line gives the normalised max
error (max |got - want| / std(want)) and the absolute one, which the tolerance bounds.

The calls it makes (float32 on the CPU; B = 1, T frames of H x W pixels, h x w = H/8 x W/8 latents):
  camera = dynamicrafter_core.camera
  camera.default_intrinsics(H, W, T)                  -> (1, T, 3, 3)  fx = fy = max(H, W)/2, cx = W/2, cy = H/2
  camera.relative_poses(c2w (B,T,4,4), cond_frame)    -> inv(c2w[cond]) @ c2w
  camera.pose_pairs(rel)                              -> (B, T, T, 4, 4), [i, j] = inv(rel[j]) @ rel[i]
  camera.perturb_zero_translations(t)                 replaces exactly the all-zero translations
  camera.fundamental_matrices(K, R, t)                -> (B, T, T, 3, 3)
  camera.plucker_rays(K, rel, H, W)                   -> (B, 6, T, H, W)
  camera.epipolar_mask(F, h, w, stride)               -> (B, T h w, T h w) bool, True = attend
  model.encode_camera(K, c2w, H, W, cond_frame, t_pairs=)  -> .features [(B, C_l, T, h_l, w_l)],
                                                          .masks(ds, h_l, w_l) -> (B, L, registers + L) or None
  model.unet(x, t, context=, fs=, camera=features)    the patched UNet; without camera: DynamiCrafter's
  model.unet.get_submodule(block): .norm1, .pluker_projection, .epipolar(tokens, B, h, w, mask)
  dynamicrafter_core.sample(model, ..., camera=features)  both CFG branches with the camera
"""
import json
import sys
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file

import dynamicrafter_core as dc
from dynamicrafter_core import camera

# absolute tolerances, from the fixture README's fp32-vs-fp64 measurements
CAMERA_ATOL = 1e-5      # rel_c2w, rel_pairs, F, plucker (translations O(0.5))
FEATURE_TOL = 1e-4      # pose features: |got - want| <= 1e-4 + 1e-4 |want|
NETWORK_ATOL = 1e-4     # one block's branches, one UNet call
LATENTS_ATOL = 2e-3     # after the 2-step DDIM run (|max| 66)
FRAMES_ATOL = 1e-3      # the decoded run
COMPONENT_TOL = 2e-3    # DynamiCrafter's conditioning, as parity_check.py: max abs error / std(reference)
MASK_FLIPS = 1e-4       # masks from our own F: at most this fraction of entries may differ (margins of 5e-5 px)


def report(name, got, want, failures, atol=None, rtol=0.0, norm_tol=None):
    got = torch.as_tensor(got).detach().float().cpu()
    want = want.float()
    if tuple(got.shape) != tuple(want.shape):
        failures.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        print(f"FAIL {name:30s} shape {tuple(got.shape)} != {tuple(want.shape)}")
        return
    diff = (got - want).abs()
    abs_err = diff.max().item()
    norm = abs_err / (want.std().item() + 1e-12) if want.numel() > 1 else abs_err
    if norm_tol is not None:
        ok, bound = norm <= norm_tol, f"normalised tolerance {norm_tol:.0e}"
    else:
        ok = bool((diff <= atol + rtol * want.abs()).all())
        bound = f"tolerance {atol:.0e}" + (f" + {rtol:.0e}|ref|" if rtol else "")
    ok = ok and bool(torch.isfinite(got).all())
    print(f"{'ok  ' if ok else 'FAIL'} {name:30s} normalised max error {norm:.2e}, absolute {abs_err:.2e} ({bound})")
    if not ok:
        failures.append(f"{name}: absolute error {abs_err:.2e}, normalised {norm:.2e} ({bound})")


def report_mask(name, got, want, failures, max_fraction=0.0):
    got = torch.as_tensor(got).cpu()
    if tuple(got.shape) != tuple(want.shape) or got.dtype != torch.bool:
        failures.append(f"{name}: {got.dtype} {tuple(got.shape)}, expected bool {tuple(want.shape)}")
        print(f"FAIL {name:30s} {got.dtype} {tuple(got.shape)} != bool {tuple(want.shape)}")
        return
    flips = int((got != want).sum())
    fraction = flips / want.numel()
    ok = fraction <= max_fraction
    print(f"{'ok  ' if ok else 'FAIL'} {name:30s} {flips} of {want.numel()} entries differ ({fraction:.1e}; "
          f"allowed {max_fraction:.0e}); {want.float().mean():.2f} attend")
    if not ok:
        failures.append(f"{name}: {flips} entries differ")


def check(name, failures, fn):
    """Runs one check; an exception is a failure of that check, not the end of the run."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (whatever the implementation raises)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
        failures.append(f"{name}: raised {msg}")
        print(f"FAIL {name:30s} raised {msg}")
        if "-v" in sys.argv:
            traceback.print_exc()


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    folder = Path(args[0])
    if len(args) > 1:
        name = args[1]
    else:
        (cfg_file,) = folder.glob("*.config.json")
        name = cfg_file.name[: -len(".config.json")]
    cfg = json.loads((folder / f"{name}.config.json").read_text())
    ref = load_file(str(folder / f"{name}.reference.safetensors"))
    torch.manual_seed(0)
    failures, skipped = [], []
    T, H, W = cfg["frames"], cfg["height"], cfg["width"]
    cond = int(ref["camera.cond_frame_index"][0])

    def have(*keys):
        missing = [k for k in keys if k not in ref]
        if missing:
            skipped.append(missing[0])
            print(f"skip {missing[0]:30s} (not in this fixture)")
        return not missing

    with torch.no_grad():
        try:
            model = dc.load_model(folder / cfg["checkpoint_file"], config=cfg["model"], device="cpu",
                                  dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"FAIL load_model raised {msg}")
            print(f"cami2v parity {name}: the model did not load: {msg}")
            sys.exit(1)
        print(f"loaded {name}: variant {model.variant!r}, {T} frames of {W}x{H}")
        if not model.variant.startswith("cami2v"):
            failures.append(f"variant {model.variant!r}, expected a CamI2V variant")
            print(f"FAIL variant {model.variant!r}, expected a CamI2V variant")

        # --- which blocks take the camera --------------------------------------------------------------------------
        def patched():
            got = sorted(n for n, m in model.unet.named_modules() if hasattr(m, "pluker_projection"))
            want = sorted(cfg["camera_blocks"])
            ok = got == want
            print(f"{'ok  ' if ok else 'FAIL'} {'camera blocks':30s} {len(got)} camera-aware temporal blocks "
                  f"(original: {len(want)})")
            if not ok:
                failures.append(f"camera blocks: {sorted(set(got) ^ set(want))[:3]} differ")
        check("camera blocks", failures, patched)

        # --- camera maths ---------------------------------------------------------------------------------------------
        K = camera.default_intrinsics(H, W, T)
        c2w = ref["camera.w2c"].inverse()
        check("camera.K", failures, lambda: report("camera.K", K, ref["camera.K"], failures, CAMERA_ATOL))
        rel = camera.relative_poses(c2w, cond)
        check("camera.rel_c2w", failures, lambda: report("camera.rel_c2w", rel, ref["camera.rel_c2w"], failures,
                                                         CAMERA_ATOL))
        pairs = camera.pose_pairs(rel)
        check("camera.rel_pairs", failures, lambda: report("camera.rel_pairs", pairs, ref["camera.rel_pairs"],
                                                           failures, CAMERA_ATOL))

        def perturbation():
            # the pairs the original perturbed (their stored translation changed) are those this test calls zero
            raw = pairs[..., :3, 3:4]
            mine = camera.perturb_zero_translations(raw) != raw
            want = ref["camera.t_pairs"] != ref["camera.t_pairs_raw"]
            ok = bool((mine.all(-2) == want.all(-2)).all())
            print(f"{'ok  ' if ok else 'FAIL'} {'camera.zero_translations':30s} {int(want.all(-2).sum())} pairs "
                  f"perturbed by the original, {int(mine.all(-2).sum())} here")
            if not ok:
                failures.append("camera.zero_translations: other pairs perturbed")
        check("camera.zero_translations", failures, perturbation)
        t_pairs = ref["camera.t_pairs"]  # the original's random perturbation, stored
        F_own = camera.fundamental_matrices(K, pairs[..., :3, :3], t_pairs)
        check("camera.F", failures, lambda: report("camera.F", F_own, ref["camera.F"], failures, CAMERA_ATOL))
        check("plucker", failures, lambda: report("plucker", camera.plucker_rays(K, rel, H, W), ref["plucker"],
                                                  failures, CAMERA_ATOL))
        strides = sorted(int(k.rsplit(".", 1)[1]) for k in ref if k.startswith("epipolar.mask."))
        for d in strides:
            want = ref[f"epipolar.mask.{d}"]
            check(f"epipolar.mask.{d}", failures, lambda d=d, want=want: report_mask(
                f"epipolar.mask.{d}", camera.epipolar_mask(ref["camera.F"], H // d, W // d, d), want, failures))
            check(f"epipolar.mask.{d}[own F]", failures, lambda d=d, want=want: report_mask(
                f"epipolar.mask.{d}[own F]", camera.epipolar_mask(F_own, H // d, W // d, d), want, failures,
                MASK_FLIPS))

        # --- the camera as the UNet reads it --------------------------------------------------------------------------
        features = None
        try:
            features = model.encode_camera(K, c2w, H, W, cond_frame=cond, t_pairs=t_pairs)
        except Exception as e:  # noqa: BLE001
            failures.append(f"encode_camera: raised {type(e).__name__}: {str(e)[:150]}")
            print(f"FAIL encode_camera raised {type(e).__name__}: {str(e)[:150]}")
        if features is not None:
            for k in range(len(model.config.pose_encoder.channels)):
                if have(f"pose_encoder.feature.{k}"):
                    check(f"pose_encoder.feature.{k}", failures, lambda k=k: report(
                        f"pose_encoder.feature.{k}", features.features[k], ref[f"pose_encoder.feature.{k}"], failures,
                        FEATURE_TOL, FEATURE_TOL))
            registers = model.config.unet.epipolar.registers
            for d in strides:
                def level_mask(d=d):
                    ds = d // 8
                    got = features.masks(ds, H // d, W // d)
                    if got is None:
                        raise ValueError(f"no mask at downsampling {ds}, where the original masks")
                    if not bool(got[..., :registers].all()):
                        raise ValueError("the register tokens are not always visible")
                    report_mask(f"camera.masks({ds})", got[..., registers:], ref[f"epipolar.mask.{d}"], failures)
                check(f"camera.masks({d // 8})", failures, level_mask)

        # --- DynamiCrafter's conditioning -------------------------------------------------------------------------
        if have("text.embedding"):
            check("text.embedding", failures, lambda: report(
                "text.embedding", model.encode_text([cfg["prompt"], ""]), ref["text.embedding"], failures,
                norm_tol=COMPONENT_TOL))
        if have("image.clip_tokens"):
            check("image.clip_tokens", failures, lambda: report(
                "image.clip_tokens", model.encode_image(ref["input.image"]), ref["image.clip_tokens"], failures,
                norm_tol=COMPONENT_TOL))
        if have("image.context"):
            check("image.context", failures, lambda: report(
                "image.context", model.project_image(ref["image.clip_tokens"]), ref["image.context"], failures,
                norm_tol=COMPONENT_TOL))
        if have("vae.latent"):
            def latent():
                video = ref["input.video"]
                frames = video.transpose(1, 2).reshape(-1, *video.shape[1:2], H, W)
                noise = ref["vae.posterior_noise"].transpose(1, 2).reshape(-1, 4, H // 8, W // 8)
                got = model.encode_latents(frames, noise=noise).reshape(1, T, 4, H // 8, W // 8).transpose(1, 2)
                report("vae.latent", got, ref["vae.latent"], failures, norm_tol=COMPONENT_TOL)
            check("vae.latent", failures, latent)

        # --- one UNet call, with and without the camera -------------------------------------------------------------
        x, t, ctx, fs = ref["unet.x"], ref["unet.t"], ref["unet.context"], ref["unet.fs"]
        if features is not None:
            check("unet.out", failures, lambda: report(
                "unet.out", model.unet(x, t, context=ctx, fs=fs, camera=features), ref["unet.out"], failures,
                NETWORK_ATOL))
        check("unet.out_nocam", failures, lambda: report(
            "unet.out_nocam", model.unet(x, t, context=ctx, fs=fs), ref["unet.out_nocam"], failures, NETWORK_ATOL))

        # --- one camera-aware block's inside ------------------------------------------------------------------------
        if have("block.norm1_out", "block.pluker_in", "block.epipolar_in", "block.epipolar_out"):
            def block():
                blk = model.unet.get_submodule(cfg["camera_block_checked"])
                report("block.norm1_out", blk.norm1(ref["block.norm1_in"]), ref["block.norm1_out"], failures,
                       NETWORK_ATOL)
                report("block.pluker_out", blk.pluker_projection(ref["block.pluker_in"]), ref["block.pluker_out"],
                       failures, NETWORK_ATOL)
                b, t_, c, h, w = ref["block.epipolar_in"].shape
                tokens = ref["block.epipolar_in"].permute(0, 3, 4, 1, 2).reshape(b * h * w, t_, c)
                stride = H // h
                mask = ref[f"epipolar.mask.{stride}"] if f"epipolar.mask.{stride}" in ref else None
                if mask is not None:
                    mask = torch.nn.functional.pad(mask, (blk.epipolar.epipolar_attn.registers, 0), value=True)
                report("block.epipolar_out", blk.epipolar(tokens, b, h, w, mask), ref["block.epipolar_out"],
                       failures, NETWORK_ATOL)
            check("block", failures, block)

        # --- the 2-step DDIM run, both branches with the camera -----------------------------------------------------
        if features is not None and have("ddim.latents"):
            run = cfg["run"]

            def ddim():
                ts = [int(v) for v in dc.ddim_timesteps(run["steps"], run["spacing"])]
                if ts != ref["ddim.timesteps"].tolist():
                    raise ValueError(f"timesteps {ts} != {ref['ddim.timesteps'].tolist()}")
                latents = dc.sample(model, context=ref["cond.context"], uncond_context=ref["cond.context_uncond"],
                                    concat=ref["cond.concat"], steps=run["steps"], cfg=run["cfg"], eta=run["eta"],
                                    guidance_rescale=run["guidance_rescale"], spacing=run["spacing"],
                                    fs=ref["cond.fs"].long(), x_T=ref["ddim.x_T"], step_noise=ref["ddim.step_noise"],
                                    camera=features, camera_cfg=run.get("camera_cfg", 1.0))
                report("ddim.latents", latents, ref["ddim.latents"], failures, LATENTS_ATOL)
                if "ddim.frames" in ref:
                    report("ddim.frames", model.decode_latents(latents), ref["ddim.frames"], failures, FRAMES_ATOL)
            check("ddim", failures, ddim)

    note = f" ({len(skipped)} not in this fixture)" if skipped else ""
    if failures:
        print(f"cami2v parity {name}: {len(failures)} check(s) failed{note}: " + "; ".join(failures[:3]))
        sys.exit(1)
    print(f"cami2v parity {name}: all checks within tolerance{note}")


if __name__ == "__main__":
    main()
