"""Run under torchrun (gloo): each process trains on different crops through the DDP wrappers,
then every parameter must be identical on all processes (gradients were averaged), and not
equal to the initial weights (the steps did something); and leaving the group ends gloo's worker
threads (a worker alive at interpreter exit can abort a finished run). Prints OK from rank 0."""
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import handgan.train as train_mod
from handgan.batches import Batch
from handgan.config import apply_overrides, preset
from handgan.distributed import init_distributed, shutdown
from handgan.steps import gan_step, supervised_step


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def thread_count():
    return len(os.listdir("/proc/self/task"))


def main():
    threads_before = thread_count()
    info = init_distributed("cpu")
    rank = info.rank
    cfg = apply_overrides(preset("quick"), ["model.width=8", "model.pose_hidden=32", "device=cpu",
                                            f"mode={sys.argv[1]}"])
    train_mod.seed_everything(0)
    gen, dis = train_mod.build_models(cfg)
    opt_g, opt_d = train_mod.build_optimizers(cfg, gen, dis)
    start = flat(gen), flat(dis)
    gan = cfg.mode == "gan"
    gen_t, dis_t = DDP(gen), DDP(dis, find_unused_parameters=not gan)
    g = torch.Generator().manual_seed(100 + rank)  # different crops on each process
    for _ in range(2):
        x_l = torch.rand(4, 1, 64, 64, generator=g) * 2 - 1
        j_l = torch.randn(4, 14, 3, generator=g) * 0.3
        x_u = torch.rand(4, 1, 64, 64, generator=g) * 2 - 1
        if gan:
            gan_step(gen_t, dis_t, opt_g, opt_d, Batch(x_l, j_l, x_u), cfg)
        else:
            supervised_step(dis_t, opt_d, Batch(x_l, j_l), cfg)
    for name, module, before in (("generator", gen, start[0]), ("discriminator", dis, start[1])):
        mine = flat(module)
        everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(everyone, mine)
        assert all(torch.equal(everyone[0], other) for other in everyone[1:]), name
        assert gan or name == "discriminator" or torch.equal(mine, before), name
        if name == "discriminator" or gan:
            assert not torch.equal(mine, before), name
    # Tear down as training does: DDP wrappers (their reducers hold the process group) go first,
    # and no process leaves before every process is done talking.
    del gen_t, dis_t
    dist.barrier()
    shutdown(info)
    assert thread_count() == threads_before, f"{thread_count()} threads, {threads_before} before"
    if rank == 0:
        print("OK")


if __name__ == "__main__":
    main()
