/* startup.c - minimal Cortex-M vector table and reset handler for QEMU mps2-an386.
 * Copies .data, lets newlib's rdimon crt0 (_start) clear .bss, set up semihosting and call main. */
#include <stdint.h>

extern uint32_t __stack_top, __etext, __data_start__, __data_end__;
extern void _start(void);

void Reset_Handler(void) {
    uint32_t *src = &__etext, *dst = &__data_start__;
    while (dst < &__data_end__) *dst++ = *src++;
    /* Enable the FPU (CP10, CP11 full access) before any float code runs. */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    _start();
    for (;;) {}
}

static void Default_Handler(void) { for (;;) {} }

__attribute__((section(".isr_vector"), used)) static const void *const vectors[16] = {
    &__stack_top, (const void *)Reset_Handler, (const void *)Default_Handler, (const void *)Default_Handler,
    (const void *)Default_Handler, (const void *)Default_Handler, (const void *)Default_Handler, 0, 0, 0, 0,
    (const void *)Default_Handler, (const void *)Default_Handler, 0, (const void *)Default_Handler,
    (const void *)Default_Handler};
