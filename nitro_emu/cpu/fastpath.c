/*
 * Native Unicorn hooks for the guest's most frequent events: SYSCALL, exceptions (#PF
 * above all), external interrupts and CPUID (glibc runs it some fifty times in every
 * process it starts). Loaded by nitro_emu/cpu/fastpath.py, which fills `struct fastpath`
 * with pointers into Unicorn's CPU state (found and checked by internals.py), guest RAM
 * and Unicorn's own routines, and registers these hooks in place of the Python ones.
 *
 * The rules are those of the Python hooks (vcpu.py, delivery.py), which stay the
 * reference and the fallback: SYSCALL's transfer as QEMU's helper_syscall does it, and
 * exception delivery handed to Unicorn's x86_cpu_do_interrupt only after checking, as
 * QEMU's do_interrupt64 and page walker would, that it cannot fault (a fault inside it
 * would longjmp over the interpreter when the slow path is taken, and some of QEMU's
 * checks abort()). This file takes only the case where every check passes; anything else
 * (a check that fails, SYSCALL outside 64-bit mode, an address outside RAM, a paging mode
 * it does not model) goes to the Python path, which finds the exact fault to raise.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct segment {            /* QEMU's SegmentCache */
    uint32_t selector, pad;
    uint64_t base;
    uint32_t limit, flags;
};

struct cpuid_entry {        /* CpuidModel.table() */
    uint32_t leaf, subleaf, any_subleaf, eax, ebx, ecx, edx;
};

struct fastpath {
    void *cpu;                           /* CPUState */
    void *env;                           /* CPUX86State */
    uint64_t *regs, *eip, *eflags, *cr;  /* regs[16], cr[5] */
    uint32_t *hflags, *cc_op;
    struct segment *segs;                /* ES CS SS DS FS GS */
    struct segment *ldt, *tr, *gdt, *idt;
    uint64_t *star, *lstar, *fmask, *efer;
    int32_t *exception_index, *exception_is_int, *old_exception;
    uint8_t *ram;
    uint64_t ram_size, rsvd_high;
    uint32_t code64_flags, data_flags;   /* SYSCALL's flat CS and SS */
    uint64_t (*read_eflags)(void *env);
    void (*write_eflags)(void *env, uint64_t value, uint32_t mask);
    void (*do_interrupt)(void *cpu);
    void (*do_hardware_interrupt)(void *env, int vector, int is_hw);
    void (*slow_exception)(void);        /* Python: checked delivery, exact faults */
    void (*slow_syscall)(void);          /* Python: SYSCALL that raises #UD */
    const struct cpuid_entry *cpuid;
    uint64_t cpuid_count;
    uint64_t all_to_python;              /* a tracer watches deliveries: take none here */
    uint64_t exceptions, syscalls, slow_exceptions;
};

enum {
    R_CS = 1, R_SS = 2, RSP = 4, RCX = 1, R11 = 11,
    HF_CPL_MASK = 3, HF_LMA = 1 << 14, HF_CS64 = 1 << 15,
    EFER_SCE = 1, RF = 1 << 16, CC_OP_EFLAGS = 1,
    DESC_P = 1 << 15, DESC_S = 1 << 12, DESC_CS = 1 << 11, DESC_C = 1 << 10,
    DESC_L = 1 << 21, DESC_B = 1 << 22,
};
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_LA57 (1ull << 12)
#define CR4_SMAP (1ull << 21)
#define CR4_PKE (1ull << 22)
#define EFER_NXE (1ull << 11)
#define PG_PRESENT 1ull
#define PG_RW 2ull
#define PG_USER 4ull
#define PG_PSE 0x80ull
#define PG_NX (1ull << 63)
#define PG_ADDRESS_MASK 0x000FFFFFFFFFF000ull
/* Vectors that push an error code (#DF #TS #NP #SS #GP #PF #AC). */
#define ERROR_CODE_VECTORS ((1u << 8) | (1u << 10) | (1u << 11) | (1u << 12) | \
                            (1u << 13) | (1u << 14) | (1u << 17))

/* -- guest memory through the guest's page tables (supervisor accesses) --------------- */

/* The physical address of `linear`, if a supervisor access of that kind cannot fault.
 * 4-level paging as delivery.py's walker does it; 1 GiB pages (not offered in CPUID) and
 * protection keys are left to the Python path. */
static bool translate(const struct fastpath *f, uint64_t linear, bool write, uint64_t *phys)
{
    uint64_t top = linear >> 47;
    if (top != 0 && top != 0x1FFFF)
        return false;
    uint64_t rsvd = f->rsvd_high | ((*f->efer & EFER_NXE) ? 0 : PG_NX);
    uint64_t table = f->cr[3] & PG_ADDRESS_MASK, rights = PG_RW | PG_USER, entry = 0;
    for (int level = 0; level < 4; level++) {
        int shift = 39 - 9 * level;
        uint64_t at = table + ((linear >> shift) & 0x1FF) * 8;
        if (at > f->ram_size - 8)
            return false;
        memcpy(&entry, f->ram + at, 8);
        if (!(entry & PG_PRESENT) || (entry & rsvd))
            return false;
        rights &= entry;
        if (level < 3 && (entry & PG_PSE)) {
            if (level != 2)  /* a PSE bit in the PML4E is reserved; 1 GiB pages not offered */
                return false;
            if (entry & 0x1FE000ull)  /* reserved bits of a 2 MiB page */
                return false;
            *phys = (entry & PG_ADDRESS_MASK & ~0x1FFFFFull) | (linear & 0x1FFFFF);
            goto rights_check;
        }
        table = entry & PG_ADDRESS_MASK;
    }
    *phys = table | (linear & 0xFFF);
rights_check:
    if ((rights & PG_USER) && (f->cr[4] & CR4_SMAP))
        return false;
    if (write && !(rights & PG_RW) && (f->cr[0] & CR0_WP))
        return false;
    return true;
}

/* The walker on its own, for tests/test_cpu_fastpath.py to hold against delivery.py's. */
int nitro_translate(const struct fastpath *f, uint64_t linear, int write, uint64_t *phys)
{
    return translate(f, linear, write != 0, phys);
}

/* Copies `length` bytes at a linear address (or only checks them, out == NULL). */
static bool access_linear(const struct fastpath *f, uint64_t linear, void *out, size_t length,
                          bool write)
{
    uint8_t *to = out;
    while (length) {
        size_t chunk = 0x1000 - (linear & 0xFFF);
        if (chunk > length)
            chunk = length;
        uint64_t phys;
        if (!translate(f, linear, write, &phys) || phys > f->ram_size ||
            chunk > f->ram_size - phys)
            return false;
        if (to) {
            memcpy(to, f->ram + phys, chunk);
            to += chunk;
        }
        linear += chunk;
        length -= chunk;
    }
    return true;
}

static bool read_u32(const struct fastpath *f, uint64_t linear, uint32_t *value)
{
    return access_linear(f, linear, value, 4, false);
}

/* -- exceptions ------------------------------------------------------------------------ */

/* True if QEMU's do_interrupt64 delivers `vector` without faulting (delivery.py _check):
 * an exception (is_int: from INT n), or an external interrupt (is_hw). */
static bool delivery_is_safe(const struct fastpath *f, int vector, bool is_int, bool is_hw)
{
    uint32_t hflags = *f->hflags;
    if (!(hflags & HF_LMA) || !(f->cr[0] & CR0_PG) || !(f->cr[4] & CR4_PAE) ||
        (f->cr[4] & (CR4_LA57 | CR4_PKE)))
        return false;
    int cpl = hflags & HF_CPL_MASK;
    const struct segment *idt = f->idt;
    if ((uint64_t)vector * 16 + 15 > idt->limit)
        return false;
    uint32_t gate[3];
    if (!access_linear(f, idt->base + (uint64_t)vector * 16, gate, sizeof gate, false))
        return false;
    uint32_t low = gate[0], high = gate[1];
    uint32_t gate_type = (high >> 8) & 0x1F;
    if (gate_type != 14 && gate_type != 15)
        return false;
    if (is_int && (int)((high >> 13) & 3) < cpl)
        return false;
    if (!(high & DESC_P))
        return false;
    uint32_t selector = low >> 16, ist = high & 7;
    if ((selector & 0xFFFC) == 0)
        return false;
    const struct segment *table = (selector & 4) ? f->ldt : f->gdt;
    if ((selector & 4) && !(table->flags & DESC_P))
        return false;
    uint32_t index = selector & ~7u, e2;
    if (index + 7 > table->limit || !read_u32(f, table->base + index + 4, &e2))
        return false;
    if (!(e2 & DESC_S) || !(e2 & DESC_CS) || !(e2 & DESC_P) || !(e2 & DESC_L) || (e2 & DESC_B))
        return false;
    int dpl = (e2 >> 13) & 3;
    if (dpl > cpl)
        return false;
    if (e2 & DESC_C)
        dpl = cpl;
    uint64_t rsp;
    if (dpl < cpl || ist) {
        const struct segment *tr = f->tr;
        uint32_t level = ist ? ist + 3 : (uint32_t)dpl;
        uint32_t at = 8 * level + 4;
        if (!(tr->flags & DESC_P) || at + 7 > tr->limit ||
            !access_linear(f, tr->base + at, &rsp, 8, false))
            return false;
    } else {
        rsp = f->regs[RSP];
    }
    rsp &= ~0xFull;
    bool error_code = !is_int && !is_hw && vector < 32 && (ERROR_CODE_VECTORS >> vector) & 1;
    unsigned frame = error_code ? 48 : 40;
    return access_linear(f, rsp - frame, NULL, frame, true);
}

static void deliver_pending(struct fastpath *f)
{
    int vector = *f->exception_index;
    if (!f->all_to_python && vector >= 0 && vector < 256 &&
        delivery_is_safe(f, vector, *f->exception_is_int != 0, false)) {
        f->do_interrupt(f->cpu);
        *f->old_exception = -1;
        return;
    }
    f->slow_exceptions++;
    f->slow_exception();
}

/* UC_HOOK_INTR */
void nitro_on_exception(void *uc, uint32_t vector, struct fastpath *f)
{
    (void)uc;
    (void)vector;
    f->exceptions++;
    deliver_pending(f);
}

/* UC_HOOK_INSN_INVALID (#UD): always handled. */
bool nitro_on_invalid_instruction(void *uc, struct fastpath *f)
{
    (void)uc;
    f->exceptions++;
    deliver_pending(f);
    return true;
}

/* An external interrupt with RFLAGS.IF set (the caller checked): delivered and 1, or 0
 * when the delivery would fault and the Python path must find out how. */
int nitro_deliver_interrupt(struct fastpath *f, int vector)
{
    if (f->all_to_python || vector < 0 || vector > 255 ||
        !delivery_is_safe(f, vector, false, true))
        return 0;
    f->do_hardware_interrupt(f->env, vector, 1);
    *f->old_exception = -1;
    return 1;
}

/* -- SYSCALL --------------------------------------------------------------------------- */

static void load_flat_segment(struct segment *seg, uint32_t selector, uint32_t flags)
{
    seg->selector = selector;
    seg->base = 0;
    seg->limit = 0xFFFFFFFF;
    seg->flags = flags;
}

/* UC_HOOK_INSN for SYSCALL: Unicorn only calls hooks and then adds 2 to RIP. */
void nitro_on_syscall(void *uc, struct fastpath *f)
{
    (void)uc;
    f->syscalls++;
    if (!(*f->hflags & HF_CS64) || !(*f->efer & EFER_SCE)) {
        f->slow_syscall();
        return;
    }
    f->regs[RCX] = *f->eip + 2;
    f->regs[R11] = f->read_eflags(f->env) & ~(uint64_t)RF;
    f->write_eflags(f->env, *f->eflags & ~(*f->fmask | RF), 0xFFFFFFFF);
    *f->cc_op = CC_OP_EFLAGS;
    uint32_t selector = (*f->star >> 32) & 0xFFFF;
    load_flat_segment(&f->segs[R_CS], selector & 0xFFFC, f->code64_flags);
    load_flat_segment(&f->segs[R_SS], (selector + 8) & 0xFFFC, f->data_flags);
    *f->hflags &= ~(uint32_t)HF_CPL_MASK;
    *f->eip = *f->lstar - 2;
}

/* -- CPUID ----------------------------------------------------------------------------- */

#define CR4_OSXSAVE (1ull << 18)

/* UC_HOOK_INSN for CPUID: answers from the model's table (vcpu.py _on_cpuid); returns 1 so
 * that Unicorn skips its own answer. */
int nitro_on_cpuid(void *uc, struct fastpath *f)
{
    (void)uc;
    uint32_t leaf = (uint32_t)f->regs[0], subleaf = (uint32_t)f->regs[RCX];
    uint32_t out[4] = {0, 0, 0, 0};
    for (uint64_t i = 0; i < f->cpuid_count; i++) {
        const struct cpuid_entry *e = &f->cpuid[i];
        if (e->leaf == leaf && (e->any_subleaf || e->subleaf == subleaf)) {
            out[0] = e->eax, out[1] = e->ebx, out[2] = e->ecx, out[3] = e->edx;
            break;
        }
    }
    if (leaf == 1)  /* OSXSAVE mirrors CR4.OSXSAVE */
        out[2] = (out[2] & ~(1u << 27)) | (uint32_t)((f->cr[4] & CR4_OSXSAVE) ? 1u << 27 : 0);
    f->regs[0] = out[0], f->regs[3] = out[1], f->regs[RCX] = out[2], f->regs[2] = out[3];
    return 1;
}

/* -- layout check and registration ----------------------------------------------------- */

/* For fastpath.py to check that its ctypes declarations match these structures. */
void nitro_layout(size_t out[3])
{
    out[0] = sizeof(struct fastpath);
    out[1] = offsetof(struct fastpath, cpuid_count);
    out[2] = sizeof(struct cpuid_entry);
}

typedef int (*hook_add_fn)(void *uc, size_t *handle, int type, void *callback,
                           void *user_data, uint64_t begin, uint64_t end, ...);

/* Registers the hooks through Unicorn's uc_hook_add (variadic: called from C so that the
 * instruction ids are passed as variadic arguments should be). Returns Unicorn's error. */
int nitro_install(struct fastpath *f, void *uc, hook_add_fn hook_add, int hook_intr,
                  int hook_insn, int hook_insn_invalid, int insn_syscall, int insn_cpuid,
                  size_t handles[4])
{
    int error = hook_add(uc, &handles[0], hook_intr, (void *)nitro_on_exception, f, 1, 0);
    if (!error)
        error = hook_add(uc, &handles[1], hook_insn_invalid,
                         (void *)nitro_on_invalid_instruction, f, 1, 0);
    if (!error)
        error = hook_add(uc, &handles[2], hook_insn, (void *)nitro_on_syscall, f, 1, 0,
                         insn_syscall);
    if (!error)
        error = hook_add(uc, &handles[3], hook_insn, (void *)nitro_on_cpuid, f, 1, 0,
                         insn_cpuid);
    return error;
}
