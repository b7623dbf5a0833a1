// SPDX-License-Identifier: GPL-3.0-or-later
// Copyright (c) 2026 bpfd.core contributors
/*
 * The bpfd.core linked dispatcher (see DESIGN.md, "The dispatcher: linked,
 * not freplace").
 *
 * Only the two entry functions are used at run time. tools/build_dispatcher.py
 * compiles this file and records each entry function's instructions, where it
 * calls a slot, where it reads CONFIG and which callee-saved registers it
 * keeps across the slot calls; plugins/module_utils/_linker.py then replaces
 * every slot call by the main body of a member program (inlined: its exits
 * become jumps to the instruction after it), or, when that cannot be done,
 * points the call at the member placed after the entry function as a
 * bpf-to-bpf subprogram. The slot stubs below exist only so that clang emits
 * a real call (ctx in r1, verdict in r0) for each slot; they are never loaded.
 *
 * An inlined member may write any of r6..r9 the entry does not keep across
 * the slot calls, so the entry must keep as few as possible there: only ctx
 * (r6). That is why the mask is read through config_after_call() below.
 *
 * CONFIG is filled per dispatcher and handed to the kernel as the value of a
 * 1-entry array map created with BPF_F_RDONLY_PROG and frozen. The verifier
 * then reads every field as a constant: slots past num_slots become dead code
 * and are removed before JIT, so an unused slot costs nothing.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define MAX_SLOTS 10

struct dispatcher_config {
	__u32 num_slots;		/* members in use, 0..MAX_SLOTS */
	__u32 proceed_on[MAX_SLOTS];	/* per slot: bit set = run the next slot */
};

/* volatile: clang must keep every read as a load instead of folding the
 * zero initialiser; const: it lands in .rodata, which we replace by our map. */
volatile const struct dispatcher_config CONFIG = {};

/*
 * Layout of CONFIG as the compiler laid it out, read from the object file by
 * tools/build_dispatcher.py so the Python side never hard-codes it. Never
 * loaded into the kernel.
 */
const __u32 config_layout[] SEC(".bpfd.layout") = {
	sizeof(struct dispatcher_config),
	offsetof(struct dispatcher_config, num_slots),
	offsetof(struct dispatcher_config, proceed_on),
	MAX_SLOTS,
};

/*
 * A slot stub must use ctx and return a value clang cannot predict: otherwise
 * clang could drop the argument or fold the result at the call site, and the
 * member put in its place would not get ctx in r1 or have its verdict used.
 */
#define SLOT_STUB(name, ctx_type)				\
	static __attribute__((noinline)) int name(ctx_type *ctx)	\
	{							\
		volatile int ret = 0;				\
		if (!ctx)					\
			return -1;				\
		return ret;					\
	}

#define XDP_STUB(i) SLOT_STUB(xdp_slot_##i, struct xdp_md)
#define TC_STUB(i) SLOT_STUB(tc_slot_##i, struct __sk_buff)
XDP_STUB(0) XDP_STUB(1) XDP_STUB(2) XDP_STUB(3) XDP_STUB(4)
XDP_STUB(5) XDP_STUB(6) XDP_STUB(7) XDP_STUB(8) XDP_STUB(9)
TC_STUB(0) TC_STUB(1) TC_STUB(2) TC_STUB(3) TC_STUB(4)
TC_STUB(5) TC_STUB(6) TC_STUB(7) TC_STUB(8) TC_STUB(9)

/*
 * CONFIG's address, loaded afresh where this is called. clang would otherwise
 * keep the address from before a slot call in a callee-saved register (r7)
 * and read the slot's mask through it after the call; an inlined member that
 * writes r7 would then break the dispatcher. An asm ld_imm64 cannot be merged
 * with another or moved across the call, so nothing but ctx lives across a
 * slot call (tools/build_dispatcher.py checks this and records the result).
 *
 * The file is compiled with -mcpu=v3 (32-bit jumps and ALU, kernel >= 5.1):
 * the verdict's low 32 bits are then tested and extended in one instruction
 * each instead of three.
 */
static __always_inline volatile const struct dispatcher_config *config_after_call(void)
{
	volatile const struct dispatcher_config *config;

	asm volatile("%0 = CONFIG ll" : "=r"(config));
	return config;
}

/*
 * Whether bit `bit` is set in `mask`. A verdict whose bit would fall outside
 * the 32-bit mask always stops the chain: without the bound, the shift would
 * be undefined in C, and the BPF shift (count taken modulo 64) would map
 * e.g. XDP verdict 66 onto bit 2. 64-bit operands spare clang a truncation
 * of the result after each shift (two instructions per slot).
 */
static __always_inline int proceeds(__u64 bit, __u64 mask)
{
	return bit < 32 && ((mask >> bit) & 1);
}

/*
 * Run slot i, then stop with its verdict unless the verdict's bit is set in
 * the slot's proceed-on mask; stop with the hook's pass value after the last
 * slot in use. The XDP bit of verdict r is bit r (bpfd's
 * XDP_DISPATCHER_RETVAL 31 is bit 31). Both reads after the call go through
 * one fresh CONFIG address (one ld_imm64 per slot).
 */
#define XDP_SLOT(i)						\
	ret = xdp_slot_##i(ctx);				\
	config = config_after_call();				\
	if (!proceeds((__u32)ret, config->proceed_on[i]))	\
		return ret;					\
	if (config->num_slots <= i + 1)				\
		return XDP_PASS;

SEC("xdp")
int xdp_dispatcher(struct xdp_md *ctx)
{
	volatile const struct dispatcher_config *config;
	int ret;

	if (CONFIG.num_slots == 0)
		return XDP_PASS;

	XDP_SLOT(0) XDP_SLOT(1) XDP_SLOT(2) XDP_SLOT(3) XDP_SLOT(4)
	XDP_SLOT(5) XDP_SLOT(6) XDP_SLOT(7) XDP_SLOT(8) XDP_SLOT(9)
	return XDP_PASS;
}

/*
 * TC verdicts start at TC_ACT_UNSPEC (-1), so the bit of verdict r is bit
 * r + 1: UNSPEC is bit 0, OK bit 1, ..., bpfd's dispatcher_return 30 is
 * bit 31.
 *
 * Falling off the end returns TC_ACT_OK, as bpfd's tc_dispatcher does
 * ("out: return TC_ACT_OK;"): the packet goes on to the stack, and under tcx
 * TC_ACT_OK is TCX_PASS.
 */
#define TC_SLOT(i)						\
	ret = tc_slot_##i(skb);					\
	config = config_after_call();				\
	if (!proceeds((__u32)ret + 1, config->proceed_on[i]))	\
		return ret;					\
	if (config->num_slots <= i + 1)				\
		return TC_ACT_OK;

SEC("tc")
int tc_dispatcher(struct __sk_buff *skb)
{
	volatile const struct dispatcher_config *config;
	int ret;

	if (CONFIG.num_slots == 0)
		return TC_ACT_OK;

	TC_SLOT(0) TC_SLOT(1) TC_SLOT(2) TC_SLOT(3) TC_SLOT(4)
	TC_SLOT(5) TC_SLOT(6) TC_SLOT(7) TC_SLOT(8) TC_SLOT(9)
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
