/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The exported dlsym: a trampoline that asks kvs__dlsym_route() (resolve.c)
 * what to do and then either returns its answer or TAIL-JUMPS into the real
 * dlsym. The tail jump is the point: glibc resolves RTLD_NEXT (and the
 * namespace of RTLD_DEFAULT) from dlsym's return address, so every lookup
 * we do not answer ourselves must reach glibc with the caller's return
 * address intact. A C wrapper would make RTLD_NEXT mean "after the shim",
 * which is the bug that broke OpenMP/torch under HAMi-core.
 *
 * void *kvs__dlsym_route(void *handle, const char *symbol, void **result_p):
 * returns the function to jump to, or NULL when *result_p is the answer.
 */
#if defined(__x86_64__)
    .text
    .globl  dlsym
    .type   dlsym, @function
    .globl  kvs__dlsym_tramp
    .hidden kvs__dlsym_tramp
    .type   kvs__dlsym_tramp, @function
    .p2align 4
dlsym:
kvs__dlsym_tramp:
    .cfi_startproc
#ifdef __CET__
    endbr64
#endif
    pushq   %rdi                    /* keep handle and symbol for the jump */
    .cfi_adjust_cfa_offset 8
    pushq   %rsi
    .cfi_adjust_cfa_offset 8
    subq    $24, %rsp               /* result slot; re-aligns the stack to 16 */
    .cfi_adjust_cfa_offset 24
    movq    $0, (%rsp)
    movq    %rsp, %rdx
    call    kvs__dlsym_route
    movq    (%rsp), %rcx
    addq    $24, %rsp
    .cfi_adjust_cfa_offset -24
    popq    %rsi
    .cfi_adjust_cfa_offset -8
    popq    %rdi
    .cfi_adjust_cfa_offset -8
    testq   %rax, %rax
    jz      1f
    jmp     *%rax                   /* real dlsym sees our caller's return address */
1:
    movq    %rcx, %rax
    ret
    .cfi_endproc
    .size   dlsym, .-dlsym
    .size   kvs__dlsym_tramp, .-kvs__dlsym_tramp

#elif defined(__aarch64__)
    /* Same shape for arm64. NOTE: not exercised on this project's CI
     * machines (x86_64 only); keep it in step with the x86_64 version. */
    .text
    .globl  dlsym
    .type   dlsym, %function
    .globl  kvs__dlsym_tramp
    .hidden kvs__dlsym_tramp
    .type   kvs__dlsym_tramp, %function
    .p2align 4
dlsym:
kvs__dlsym_tramp:
    .cfi_startproc
    hint    34                      /* bti c */
    stp     x29, x30, [sp, #-48]!
    .cfi_def_cfa_offset 48
    .cfi_offset 29, -48
    .cfi_offset 30, -40
    mov     x29, sp
    stp     x0, x1, [sp, #16]
    str     xzr, [sp, #32]
    add     x2, sp, #32
    bl      kvs__dlsym_route
    mov     x16, x0
    ldr     x3, [sp, #32]
    ldp     x0, x1, [sp, #16]
    ldp     x29, x30, [sp], #48
    .cfi_def_cfa_offset 0
    cbz     x16, 1f
    br      x16
1:
    mov     x0, x3
    ret
    .cfi_endproc
    .size   dlsym, .-dlsym
    .size   kvs__dlsym_tramp, .-kvs__dlsym_tramp
#endif

#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack, "", %progbits
#endif
