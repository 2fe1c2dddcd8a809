"""Matched pair at one seed: where teacherAhead's student still equals plain nnU-Net's, and when its gate opened.
Usage: python matched_pair.py WORKDIR SEED (a benchmark workdir holding both runs of the seed)."""
import glob, re, sys, torch
workdir, seed = sys.argv[1], sys.argv[2]
R = glob.glob(f'{workdir}/nnUNet_results/*')[0]
plain = f'{R}/nnUNetTrainer_benchCPU_seed{seed}__nnUNetPlans__2d_bench/fold_0'
ta = f'{R}/nnUNetTrainerCMEDL_teacherAhead_benchCPU_seed{seed}__nnUNetPlans__2d_bench/fold_0'
log = open(glob.glob(ta + '/training_log*')[0]).read()
epochs = re.split(r'Epoch (\d+) \n', log)
closed = set(int(e) for e, body in zip(epochs[1::2], epochs[2::2]) if 'hint weight this epoch: 0 ' in body)
n = len(epochs[1::2])
print(f'seed {seed}: gate open in epochs {[e for e in range(n) if e not in closed]} of {n}')
for ep in (10, 20, 30, 40):
    a = torch.load(f'{plain}/checkpoint_epoch_{ep:04d}.pth', map_location='cpu', weights_only=False)['network_weights']
    b = torch.load(f'{ta}/checkpoint_epoch_{ep:04d}.pth', map_location='cpu', weights_only=False)['network_weights']
    d = [k for k in a if not torch.equal(a[k], b[k])]
    print(f'  after epoch {ep}: {len(d)} of {len(a)} student tensors differ from plain nnU-Net, max |diff| '
          f'{max((a[k] - b[k]).abs().max().item() for k in a):.3g}')
